"""Prompt building: layout, truncation, and identical ids from transformers (training) and `tokenizers` (runtime)."""

from __future__ import annotations

import pytest

from mmsrarec_edge.core.keywords import parse_keywords
from mmsrarec_edge.core.summary_prompts import (
    IMAGE_INSTRUCTION,
    IMAGE_TOKEN,
    TEXT_INSTRUCTION,
    TEXT_OPENING,
    PromptSpec,
    completion_until_eos,
    image_prompt_ids,
    prompt_ids,
    suppressed_token_ids,
    target_ids,
    text_prompt_ids,
)


@pytest.fixture(scope="module")
def tok():
    from mmsrarec_edge.models.mllm import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def spec(tok):
    return PromptSpec(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                      image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                      num_image_tokens=16, bos_id=tok.bos_token_id, max_text_tokens=12)


def enc_of(tok):
    return lambda s: tok(s, add_special_tokens=False)["input_ids"]


def test_image_token_string_matches_model_module():
    from mmsrarec_edge.models.mllm import IMAGE_TOKEN as MODEL_IMAGE_TOKEN

    assert IMAGE_TOKEN == MODEL_IMAGE_TOKEN


def test_image_prompt_layout(tok, spec):
    ids = image_prompt_ids(enc_of(tok), spec)
    assert ids[0] == tok.bos_token_id
    assert ids[1:17] == [spec.image_token_id] * 16
    assert tok.decode(ids[17:]) == IMAGE_INSTRUCTION
    assert ids.count(spec.image_token_id) == 16
    no_bos = PromptSpec(**{**spec.to_dict(), "bos_id": None})
    assert image_prompt_ids(enc_of(tok), no_bos) == ids[1:]


def test_text_prompt_layout_and_truncation(tok, spec):
    enc = enc_of(tok)
    text = "A rustic   plastic clock,\n in blue with a dotted finish and a small size. Designed in a studio."
    ids = text_prompt_ids(enc, spec, text)
    opening, instr = enc(TEXT_OPENING), enc(TEXT_INSTRUCTION)
    assert ids[0] == tok.bos_token_id and ids[1:1 + len(opening)] == opening and ids[-len(instr):] == instr
    body = ids[1 + len(opening):-len(instr)]
    assert body == enc(" ".join(text.split()))[:12] and len(body) == 12
    assert spec.image_token_id not in text_prompt_ids(enc, spec, "a <image> in the text")
    assert prompt_ids(enc, spec, "text", text) == ids and prompt_ids(enc, spec, "image") == image_prompt_ids(enc, spec)
    with pytest.raises(ValueError):
        prompt_ids(enc, spec, "audio")


def test_target_round_trip(tok, spec):
    kws = ["small", "blue", "dotted", "sci-fi", "it's"]
    ids = target_ids(enc_of(tok), spec, kws)
    assert ids[-1] == spec.eos_id
    text = tok.decode(completion_until_eos(ids, spec.eos_id), skip_special_tokens=True)
    assert text == "small, blue, dotted, sci - fi, it ' s"  # WordPiece spaces out punctuation...
    assert parse_keywords(text) == kws  # ...and the parser puts it back


def test_runtime_tokenizer_gives_identical_ids(tok, spec, tmp_path):
    """The ONNX runtime builds prompts with `tokenizers` from the saved tokenizer.json: ids must be identical."""
    from tokenizers import Tokenizer

    tok.save_pretrained(tmp_path)
    rt = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))

    def rt_enc(s):
        return rt.encode(s, add_special_tokens=False).ids

    for text in ["Nimbus clock. Vintage cotton clock in yellow, striped, large.",
                 "Toy Story (1995). Sci-Fi & it's 3.5"]:
        assert text_prompt_ids(rt_enc, spec, text) == text_prompt_ids(enc_of(tok), spec, text)
    assert image_prompt_ids(rt_enc, spec) == image_prompt_ids(enc_of(tok), spec)
    ids = target_ids(enc_of(tok), spec, ["red", "striped lamp"]) + [spec.pad_id]
    assert rt.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True) == "red, striped lamp"


def test_suppressed_tokens(spec):
    assert suppressed_token_ids(spec) == sorted({spec.image_token_id, spec.pad_id, spec.bos_id})
    same = PromptSpec(eos_id=5, pad_id=5, image_token_id=9, num_image_tokens=1)
    assert suppressed_token_ids(same) == [9]  # pad doubling as eos must stay generable
    assert completion_until_eos([4, 3, 5, 7], 5) == [4, 3] and completion_until_eos([4, 3], 5) == [4, 3]
    assert PromptSpec.from_dict({**spec.to_dict(), "extra": 1}) == spec

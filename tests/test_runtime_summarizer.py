"""Cold-start summarization in numpy/ONNX Runtime: greedy tokens equal PyTorch generate, eos stops a row, real PNG."""

import numpy as np
import pytest
from PIL import Image
from runtime_support import shared_tiny_llava

from mmsrarec_edge.core.imaging import preprocess
from mmsrarec_edge.core.keywords import parse_keywords
from mmsrarec_edge.core.summary_prompts import PromptSpec, image_prompt_ids, text_prompt_ids
from mmsrarec_edge.runtime.llm import Decoder, Embedder, ImageEncoder
from mmsrarec_edge.runtime.sessions import SessionConfig, open_session
from mmsrarec_edge.runtime.summarizer import ItemSummarizer, greedy_generate
from mmsrarec_edge.runtime.tokenizer import Codec

TEXT = "A red striped lamp made of cotton, in a modern style; small and light."


@pytest.fixture(scope="module")
def tiny():
    return shared_tiny_llava()


@pytest.fixture(scope="module")
def parts(tiny):
    cfg = SessionConfig.resolve("cpu", threads=1)
    emb = Embedder(open_session(tiny.path("embed"), cfg), tiny.image_token_id)
    dec = Decoder(open_session(tiny.path("decoder_last"), cfg))
    vis = ImageEncoder(open_session(tiny.path("vision"), cfg))
    return emb, dec, vis, Codec(tiny.tokenizer_json)


def _spec(tok, eos=None):
    return PromptSpec(eos_id=eos if eos is not None else tok.eos_token_id, pad_id=tok.pad_token_id,
                      image_token_id=tok.convert_tokens_to_ids("<image>"), num_image_tokens=16, bos_id=tok.bos_token_id)


def _torch_generate(tiny, prompts, pixels, spec, n):
    from mmsrarec_edge.summarize.generation import Prompt, generate

    return generate(tiny.model, [Prompt(0, "image" if px is not None else "text", p, px)
                                 for p, px in zip(prompts, pixels)], spec, n)


def test_codec_matches_the_training_tokenizer(tiny, parts):
    codec = parts[3]
    assert codec.encode(TEXT) == tiny.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    ids = codec.encode(TEXT) + [tiny.tokenizer.eos_token_id]
    assert codec.decode(ids) == tiny.tokenizer.decode(ids, skip_special_tokens=True)
    assert codec.token_id("<image>") == tiny.image_token_id


@pytest.mark.parametrize("eos_from", [None, "image"])
def test_greedy_equals_pytorch_generate(tiny, parts, eos_from):
    """Batched, left-padded prompts with and without image; eos taken from a row's own first token makes that row
    stop at once while the others run on (the random model repeats one token, so its argmax is known)."""
    emb, dec, vis, codec = parts
    spec = _spec(tiny.tokenizer)
    rng = np.random.default_rng(0)
    px = rng.standard_normal((3, 64, 64)).astype(np.float32)
    prompts = [image_prompt_ids(codec.encode, spec), text_prompt_ids(codec.encode, spec, TEXT),
               text_prompt_ids(codec.encode, spec, "short")]
    pixels = [px, None, None]
    if eos_from is not None:
        first = _torch_generate(tiny, prompts, pixels, spec, 1)
        spec = _spec(tiny.tokenizer, eos=first[0 if eos_from == "image" else 1][0])
    ref = _torch_generate(tiny, prompts, pixels, spec, 6)
    got = greedy_generate(dec, emb, prompts, spec, 6, [[vis(px[None])[0]], None, None])
    assert got == ref
    if eos_from is not None:
        stopped = 0 if eos_from == "image" else 1
        assert got[stopped] == [spec.eos_id] and max(len(g) for g in got) == 6


def test_summarize_item_from_a_png(tiny, parts, tmp_path):
    emb, dec, vis, codec = parts
    spec = _spec(tiny.tokenizer)
    arr = (np.random.default_rng(5).random((80, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "item.png")
    summ = ItemSummarizer(vis, emb, dec, codec, spec, image_size=64, max_new_tokens=8)
    out = summ.summarize(tmp_path / "item.png", TEXT)
    ref = _torch_generate(tiny, [image_prompt_ids(codec.encode, spec), text_prompt_ids(codec.encode, spec, TEXT)],
                          [preprocess(Image.fromarray(arr), 64), None], spec, 8)
    for task, ids in zip(("image", "text"), ref):
        body = [t for t in ids if t != spec.eos_id]
        assert getattr(out, f"{task}_keywords") == parse_keywords(
            tiny.tokenizer.decode(body, skip_special_tokens=True), max_keywords=8)
    assert out.image_keywords and out.text_keywords  # a random model still writes some word
    assert out.keywords == list(dict.fromkeys(out.text_keywords + out.image_keywords))
    # Image and text are summarized separately: no image -> no image keywords, the same text keywords.
    text_only = summ.summarize(None, TEXT)
    assert text_only.image_keywords == [] and text_only.text_keywords == out.text_keywords
    assert summ.summarize(None, "   ").keywords == []


def test_bad_image_is_a_user_error(parts, tiny, tmp_path):
    from mmsrarec_edge.core.errors import UserError

    emb, dec, vis, codec = parts
    summ = ItemSummarizer(vis, emb, dec, codec, _spec(tiny.tokenizer), image_size=64, max_new_tokens=2)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot be decoded"):
        summ.summarize(tmp_path / "bad.png", TEXT)
    with pytest.raises(UserError, match="does not exist"):
        summ.summarize(tmp_path / "missing.png", TEXT)


def test_prompt_spec_from_bundle_config():
    from mmsrarec_edge.core.errors import BundleError
    from mmsrarec_edge.runtime.summarizer import prompt_spec_from_config

    saved = PromptSpec(eos_id=5, pad_id=0, image_token_id=9, num_image_tokens=4, bos_id=None, max_text_tokens=33)
    assert prompt_spec_from_config({"prompt_spec": saved.to_dict(), "image_token_id": 1}) == saved
    rebuilt = prompt_spec_from_config({"special_tokens": {"eos_id": 102, "pad_id": 0, "bos_id": 101},
                                       "image_token_id": 30522, "num_image_tokens": 16})
    assert rebuilt == PromptSpec(102, 0, 30522, 16, 101)
    with pytest.raises(BundleError, match="lacks"):
        prompt_spec_from_config({"special_tokens": {}})


def test_bundle_summarizer_uses_the_saved_prompt_spec(tiny):
    from runtime_support import shared_tiny_bundle

    from mmsrarec_edge.core.bundle import load_manifest
    from mmsrarec_edge.runtime.summarizer import load_item_summarizer

    summ = load_item_summarizer(load_manifest(shared_tiny_bundle().dir), SessionConfig.resolve("cpu", threads=1))
    assert summ.spec.max_text_tokens == 48 and summ.max_new_tokens == 8 and summ.image_size == 64
    out = summ.summarize(None, "word " * 200)  # 200 tokens of text are cut to 48 by the prompt builder
    assert out.text_keywords and out.image_keywords == []

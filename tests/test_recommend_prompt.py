"""The recommender's prompt builder: prefix/suffix split, truncation, the rank hint, torch-free tokenizer parity."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mmsrarec_edge.core import prompt as P
from mmsrarec_edge.core.context import ItemText, PromptMaker, SASRecRanks
from mmsrarec_edge.core.errors import UserError
from mmsrarec_edge.runtime.tokenizer import Codec

HIST = [["red", "lamp"], ["blue", "clock", "striped"], ["green; vase", "wood"], ["a", "b"], ["c"], ["d", "e"]]
COLLAB = [["yellow", "kite"], ["pink", "badge", "metal"]]


def _build_prompt(history, collab, title, keywords, cfg=None):
    return P.prefix_text(history, collab, cfg), P.suffix_text(title, keywords, cfg=cfg)


def test_prefix_holds_everything_but_the_candidate():
    cfg = P.PromptConfig(history_len=5, item_keywords=2, collab_items=1, collab_item_keywords=1, rank_hint=False)
    a = _build_prompt(HIST, COLLAB, "Fable lamp", ["small", "red"], cfg=cfg)
    b = _build_prompt(HIST, COLLAB, "Quill clock", ["large", "blue"], cfg=cfg)
    assert a[0] == b[0]  # the shared prefix does not depend on the candidate
    assert "Fable" not in a[0] and "Fable lamp : small, red" in a[1]
    assert a[1].endswith("answer :") and a[0].endswith("candidate :")
    # last 5 history items, 2 keywords each, ";" inside a keyword cannot split a group
    assert "user history : blue, clock ; green, vase, wood ; a, b ; c ; d, e ." in a[0]
    assert "lamp" not in a[0]  # the oldest history item fell out of the last-5 window
    assert "similar users then chose : yellow ." in a[0]  # 1 group, 1 keyword


def test_empty_context_and_keywords_say_none():
    pre, suf = _build_prompt([], None, "X", [], cfg=P.PromptConfig(rank_hint=False))
    assert "user history : none" in pre and "similar users then chose : none" in pre
    assert suf.startswith(" X : none")


def test_image_slots_and_rank_hint():
    cfg = P.PromptConfig(rank_hint=True)
    suf = P.suffix_text("T", ["k"], n_image_tokens=3, rank=4, cfg=cfg)
    assert suf.count(P.IMAGE_TOKEN) == 3 and "sequential rank : 5 ." in suf
    compact = P.suffix_text("T", ["k"], n_image_tokens=3, rank=4, cfg=P.PromptConfig(rank_hint=True, style="compact"))
    assert compact.endswith(" <image> . rank 5 ?")
    with pytest.raises(ValueError):
        P.suffix_text("T", ["k"], cfg=cfg)  # a rank-hint prompt without the rank
    assert [P.rank_bucket(r) for r in (0, 1, 8, 9, 10, 19, 48, 99, 136, 999, 1348)] == [
        "1", "2", "9", "10", "10", "20", "40", "100", "100", "1000", "1000"]
    assert [P.rank_bucket(r, 2) for r in (8, 48, 136, 1348)] == ["9", "49", "130", "1300"]


def test_sasrec_ranks_match_argsort():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 8)).astype(np.float32)
    u = rng.normal(size=8).astype(np.float32)
    r = SASRecRanks(list(range(100, 130)), emb)
    order = np.argsort(-(emb @ u))
    assert r.ranks(u, [100 + int(order[0]), 100 + int(order[7]), 999]) == [0, 7, 30]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from mmsrarec_edge.models.mllm import build_tokenizer

    tok = build_tokenizer()
    out = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(out)
    return tok, out


TEXTS = [
    P.prefix_text(HIST, COLLAB),
    P.suffix_text("Toy Story (1995)", ["toy", "spaceman", "Lasseter"], n_image_tokens=2, rank=3,
                  cfg=P.PromptConfig(rank_hint=True)),
    "Amélie — café, naïve; “quotes” & 1,000 items... <image><image> UPPER lower",
    P.title_from_keywords(["x-ray", "sci-fi"])[0] + P.keywords_target(["don't", "état"], 5),
]


def test_torch_free_tokenizer_matches_transformers(tokenizer):
    tok, path = tokenizer
    codec = Codec(path / "tokenizer.json")
    for text in TEXTS:
        assert codec.encode(text) == tok(text, add_special_tokens=False)["input_ids"], text
    assert codec.token_id(P.IMAGE_TOKEN) == tok.convert_tokens_to_ids(P.IMAGE_TOKEN)
    for w in P.ANSWER_WORDS:  # single-token answers
        assert codec.encode(w) == [tok.convert_tokens_to_ids(w)]


def test_prompt_maker_ids_are_prefix_plus_suffix(tokenizer):
    tok, path = tokenizer
    codec = Codec(path / "tokenizer.json")
    items = {1: ItemText("Fable lamp", ["red", "lamp"], True), 2: ItemText("Quill clock", ["blue"], False)}
    cfg = P.PromptConfig(candidate_image=True, rank_hint=False)
    maker = PromptMaker(items, codec.encode, tok.bos_token_id, cfg, n_image_tokens=4)
    prefix, suffixes = maker.case([2, 1], None, [1, 2], collab=[["x"]])
    assert prefix[0] == tok.bos_token_id
    assert prefix == [tok.bos_token_id] + tok(P.prefix_text([["blue"], ["red", "lamp"]], [["x"]], cfg),
                                              add_special_tokens=False)["input_ids"]
    img = tok.convert_tokens_to_ids(P.IMAGE_TOKEN)
    assert suffixes[0].count(img) == 4 and suffixes[1].count(img) == 0  # only items with an image get slots
    assert maker.suffix(1) is maker.suffix(1)  # cached per item


def test_prompt_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "import mmsrarec_edge.core.prompt, mmsrarec_edge.core.context, mmsrarec_edge.core.retrieval\n"
            "print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_compact_style_states_the_question_once():
    """The compact suffix holds only the candidate's own words and a one-word answer marker; the verbose one (the
    default, and what configs stored before `style` existed were trained with) repeats the question per candidate."""
    compact, verbose = P.PromptConfig(rank_hint=True, style="compact"), P.PromptConfig(rank_hint=True)
    assert verbose.style == "verbose"
    c = P.suffix_text("red lamp", ["red", "lamp"], rank=39, cfg=compact)
    v = P.suffix_text("red lamp", ["red", "lamp"], rank=39, cfg=verbose)
    assert c == " red lamp : red, lamp . rank 40 ?"
    assert v == " red lamp : red, lamp . sequential rank : 40 . will the user choose it ? answer :"
    assert len(v.split()) - len(c.split()) == 10  # words saved per candidate
    pre_c = P.prefix_text([["a"]], None, compact)
    assert pre_c == P.prefix_text([["a"]], None, verbose)  # the prefix (the question, once) is the same
    assert pre_c.startswith("predict if the user will choose the candidate next")
    # a stored config without the key was trained verbose; one written whole keeps its style
    assert P.PromptConfig.from_dict({"rank_hint": True}).style == "verbose"
    assert P.PromptConfig.from_dict(compact.to_dict()).style == "compact"
    with pytest.raises(UserError, match="unknown prompt style 'terse'"):
        P.PromptConfig(style="terse")

"""One candidate-spec parser (core/candidates.py) behind the CLI, the Triton protocol and the Triton client, with one
error text; and the runtime's first stage (runtime/first_stage.py) on a toy catalog. Torch-free and fast."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from mmsrarec_edge.core.candidates import DEFAULT_RESCORE, CandidateSpec, parse_item_ids
from mmsrarec_edge.core.errors import UserError
from mmsrarec_edge.runtime.first_stage import FirstStage, popularity_scores
from mmsrarec_edge.serving import client, protocol


def row(candidate_mode="", candidates=(), history=(1, 2), top_k=5):
    return protocol.decode_row([-1], list(history), list(candidates) or [-1], [candidate_mode.encode()], [top_k])


def client_request(candidates=None, history="1,2"):
    return client._request(argparse.Namespace(candidates=candidates, history=history))


@pytest.mark.parametrize("text", ["sampled:x", "sampled:0", "best", "1,x", "3,3", ","])
def test_cli_protocol_and_client_share_one_error_text(text):
    with pytest.raises(UserError) as cli:
        CandidateSpec.parse(text, "--candidates")
    with pytest.raises(UserError) as served:
        row(candidate_mode=text)
    with pytest.raises(UserError) as called:
        client_request(text)
    assert called.value.message == cli.value.message
    assert served.value.message == cli.value.message.replace("--candidates", "candidate_mode")
    assert served.value.hint == cli.value.hint == called.value.hint


@pytest.mark.parametrize("mode, ids, want", [
    ("", (), CandidateSpec()), ("ids", (), CandidateSpec()), ("ALL ", (), CandidateSpec("all")),
    ("sampled:4", (), CandidateSpec("sampled", n=4)), ("", (7, 3), CandidateSpec("ids", ids=(7, 3))),
    ("7,3", (), CandidateSpec("ids", ids=(7, 3))),
])
def test_protocol_rows_decode_to_specs(mode, ids, want):
    got = row(candidate_mode=mode, candidates=ids)
    assert got == {"user": None, "history": [1, 2], "candidates": want, "top_k": 5}


def test_protocol_rejects_ids_with_a_mode_and_duplicate_ids():
    with pytest.raises(UserError, match="takes no candidate ids"):
        row(candidate_mode="all", candidates=(4,))
    with pytest.raises(UserError, match="duplicate candidate item id 4"):
        row(candidates=(4, 4))
    with pytest.raises(UserError, match="exactly one of user"):
        row(history=())


def test_client_splits_ids_from_modes():
    assert client_request("4,5") == ([1, 2], [4, 5], "")
    assert client_request("sampled:3") == ([1, 2], None, "sampled:3")
    assert client_request(None, history=None) == (None, None, "")
    with pytest.raises(UserError, match="--history must be comma-separated integer item ids"):
        client_request(history="1,x")
    assert client.main(["--history", "1", "--candidates", "sampled:x"]) == 2  # before any connection


def test_item_ids_accept_commas_and_semicolons():
    assert parse_item_ids(" 3; 1,2 ") == [3, 1, 2]
    with pytest.raises(UserError, match="--history must be"):
        parse_item_ids("1,two")


class Catalog:
    def __init__(self, ids):
        self.ids = list(ids)

    def __contains__(self, item):
        return item in self.ids


def test_first_stage_ranks_by_sasrec_then_popularity_then_catalog_order():
    cat = Catalog([10, 11, 12, 13, 14])
    index = {10: 1, 11: 2, 12: 3, 13: 4}  # item 14 is a cold-start item: no SASRec row
    emb = np.array([[0.0], [3.0], [1.0], [2.0]], np.float32)
    pop = popularity_scores({1: [10, 12], 2: [12, 13], 3: [12]}, cat.ids)
    assert pop.tolist() == [1, 0, 3, 1, 0]
    first = FirstStage(cat, index, emb, pop, n_rescore=2)
    cands, scores, mode = first.candidates(None, [10], np.array([1.0], np.float32))
    assert (cands, scores, mode) == ([11, 13, 14], [3.0, 2.0, None], "sasrec+llm")  # cold items always rescored
    cands, _, mode = FirstStage(cat, index, None, pop, 2).candidates("", [10], None)
    assert (cands, mode) == ([12, 13, 14], "popularity+llm")
    cands, _, mode = FirstStage(cat, {}, None, None, 2).candidates(None, [10], None, n_rescore=3)
    assert (cands, mode) == ([11, 12, 13], "catalog-order+llm")


def test_first_stage_other_specs():
    cat = Catalog(range(1, 9))
    first = FirstStage(cat, {}, None, None, DEFAULT_RESCORE)
    assert first.candidates("all", [1, 2], None) == ([3, 4, 5, 6, 7, 8], None, "all")
    a, b = (first.candidates("sampled:3", [1], None, seed=5) for _ in range(2))
    assert a == b and len(a[0]) == 3 and 1 not in a[0] and a[2] == "sampled:3"
    assert first.candidates([1, 5], [1], None) == ([1, 5], None, "list")  # asked-for history items are kept
    with pytest.raises(UserError, match="sampled:9 asks for 9 candidates; 7 items"):
        first.candidates("sampled:9", [1], None)
    with pytest.raises(UserError, match="unknown candidate item id 99"):
        first.candidates("5,99", [1], None)
    with pytest.raises(UserError, match="n_rescore must be >= 1"):
        first.candidates(None, [1], None, n_rescore=0)

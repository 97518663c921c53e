"""Graph kinds: one class per kind (core/graph_kinds.py torch-free, exporter/kinds.py torch side) that the bundle
writer, the parity gate, the TensorRT profiles and the Triton repository all read; a registered new kind or decoder
family is picked up by each without other edits. And the parity gate runs the runtime's own code: breaking the
runtime's loops makes it refuse good graphs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from runtime_support import shared_tiny_bundle, shared_tiny_llava

from mmsrarec_edge.core import graph_kinds as core
from mmsrarec_edge.core.bundle import load_manifest
from mmsrarec_edge.exporter import kinds
from mmsrarec_edge.exporter.parity import Metrics, check
from mmsrarec_edge.exporter.profile import ALL_GRAPHS, Limits, parse_profile


@pytest.fixture
def registries():
    """Registrations made by a test are undone after it."""
    saved_core = dict(core.GRAPH_KINDS)
    saved_export = {k: list(v) for k, v in kinds.EXPORT_KINDS.items()}
    yield
    core.GRAPH_KINDS.clear()
    core.GRAPH_KINDS.update(saved_core)
    kinds.EXPORT_KINDS.clear()
    kinds.EXPORT_KINDS.update(saved_export)


@pytest.fixture(scope="module")
def tiny():
    return shared_tiny_llava()


def test_every_graph_has_one_kind_on_both_sides():
    assert sorted(core.GRAPH_KINDS) == sorted(kinds.EXPORT_KINDS) == sorted(
        ["vision", "embed", "decoder_last", "decoder_yes_no", "decoder_scorer", "user_encoder"])
    for graph in ALL_GRAPHS:
        name = core.kind_of(graph)
        # the kind's class, and decoder families' subclasses registered after it (exporter/qwen_vl.py)
        for cls in kinds.EXPORT_KINDS[name]:
            assert issubclass(cls, core.GRAPH_KINDS[name]) and issubclass(cls, kinds.ExportKind)
    assert sorted(core.known_graphs()) == sorted(ALL_GRAPHS)
    with pytest.raises(ValueError, match="no graph kind covers"):
        core.kind_of("recommender.nothing")


@pytest.mark.parametrize("name", sorted(core.GRAPH_KINDS))
def test_every_dynamic_input_dim_has_a_tensorrt_range(name):
    cls = core.GRAPH_KINDS[name]
    for graph in cls.graphs:
        kind = cls(graph)
        io = kind.io(layers=2)
        dims = {d for n in io.inputs for d in io.dynamic_axes.get(n, {}).values()}
        for profile, ranges in kind.dim_ranges(Limits()):
            assert dims <= set(ranges), (graph, profile, dims - set(ranges))
            assert all(r["min"] <= r["opt"] <= r["max"] for r in ranges.values()), (graph, profile)
        assert kind.max_batch(Limits()) >= 1


def test_the_exported_bundle_is_described_by_its_kinds():
    """Every manifest entry's kind is the registered kind of its graph; the kind's names, TensorRT profiles and
    Triton batch axis are the ones the bundle holds."""
    bundle = shared_tiny_bundle()
    man = load_manifest(bundle.dir, verify=False)
    layers = man.config()["recommender"]["num_layers"]
    for graph, entry in man.graphs.items():
        kind = core.graph_kind(entry["kind"], graph)
        assert entry["kind"] == core.kind_of(graph)
        io = kind.io(layers)
        assert [t["name"] for t in entry["inputs"]] == list(io.inputs), graph
        assert [t["name"] for t in entry["outputs"]] == list(io.outputs), graph
        assert kind.tensorrt_profiles(entry["inputs"], man.profile["limits"]) == entry["tensorrt"]["profiles"]
        assert kind.triton_io(entry).batched == (graph != "recommender.scorer")


def test_triton_reads_the_kind_and_falls_back_to_the_shapes_for_an_unknown_one():
    from mmsrarec_edge.serving.triton_repo import graph_tensors

    entry = {"kind": "user_encoder", "inputs": [{"name": "history", "dtype": "int64", "shape": ["batch", 8]}],
             "outputs": [{"name": "user_embedding", "dtype": "float32", "shape": ["batch", 16]}]}
    tensors, limit = graph_tensors("sasrec.user_encoder", entry, {"user_batch": 64})
    assert tensors.batched and tensors.inputs == [("history", "int64", [8])] and limit == 64
    future = {**entry, "kind": "a_later_kind"}  # a bundle from a newer exporter: the shared symbolic axis decides
    tensors, limit = graph_tensors("sasrec.user_encoder", future, {"user_batch": 64})
    assert tensors.batched and limit == 0
    odd = {**entry, "outputs": [{"name": "user_embedding", "dtype": "float32", "shape": ["rows", 16]}]}
    assert not graph_tensors("sasrec.user_encoder", odd, {})[0].batched  # shapes that contradict the kind


# ---------------------------------------------------------------- a new kind, registered in a test


class _Norms(torch.nn.Module):
    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, input_ids):
        return self.table(input_ids).norm(dim=-1)


def _register_token_norms():
    """A kind the package does not have: per-token embedding norms of the recommender ([batch, sequence])."""

    @core.register
    class TokenNormKind(core.GraphKind):
        name = "token_norm"
        graphs = ("recommender.token_norms",)
        batch_limit = "max_candidates"

        def io(self, layers=1):
            axes = {"input_ids": {0: "batch", 1: "sequence"}, "norms": {0: "batch", 1: "sequence"}}
            return core.GraphIO(("input_ids",), ("norms",), axes)

        def dim_ranges(self, limits):
            C, S = limits.max_candidates, limits.max_suffix_tokens
            return [("rows", {"batch": {"min": 1, "opt": C, "max": C}, "sequence": {"min": 1, "opt": S, "max": S}})]

    @kinds.register
    class TokenNormExport(TokenNormKind, kinds.ExportKind):
        def module(self, model, yes_no_ids=None):
            return _Norms(model.get_input_embeddings())

        def example(self, model):
            return (torch.ones(2, 5, dtype=torch.long),)

        def runtime(self, session):
            return lambda ids: session.run(["norms"], {"input_ids": ids})[0]

        def parity(self, run):
            acc = Metrics()
            ids = run.rng.integers(0, 1000, size=(3, 7)).astype(np.int64)
            ref = run.model.get_input_embeddings()(torch.from_numpy(ids)).norm(dim=-1).numpy()
            acc.add("features", run.runtime(ids), ref)
            return acc, {"rows": 3.0}

    return TokenNormExport


def test_a_new_kind_is_picked_up_by_spec_parity_tensorrt_and_triton(registries, tiny, tmp_path):
    from mmsrarec_edge.exporter.bundle import ExportInputs, MLLMInput, export_bundle
    from mmsrarec_edge.serving.triton_repo import RepoConfig, write_model_repository

    cls = _register_token_norms()
    profile = parse_profile({"graphs": ["recommender.token_norms"], "parity": {"cases": 1}})  # a known graph now
    export_bundle(ExportInputs(recommender=MLLMInput(tiny.model, tiny.tokenizer), yes_no_ids=(tiny.yes_id, tiny.no_id)),
                  profile, tmp_path / "b")
    entry = load_manifest(tmp_path / "b").graphs["recommender.token_norms"]
    assert entry["kind"] == "token_norm"
    assert [t["name"] for t in entry["inputs"]] == ["input_ids"] and entry["outputs"][0]["shape"] == ["batch",
                                                                                                      "sequence"]
    parity = entry["variants"]["fp32"]["parity"]
    assert parity["passed"] and parity["metrics"]["features"] < 1e-5 and parity["info"] == {"rows": 3.0}
    (trt,) = entry["tensorrt"]["profiles"]
    assert trt["name"] == "rows" and trt["shapes"]["input_ids"]["max"] == [21, 96]
    write_model_repository(tmp_path / "b", tmp_path / "repo", RepoConfig(device="cpu", max_batch_size=4))
    config = (tmp_path / "repo" / "recommender_token_norms" / "config.pbtxt").read_text()
    assert "max_batch_size: 21" in config and "dims: [ -1 ]" in config  # limit max_candidates; batch axis out
    # and the gate refuses the graph checked against another model
    from mmsrarec_edge.models.mllm import MLLMConfig, build_mllm

    other = build_mllm(MLLMConfig(hidden_size=64, intermediate_size=128, seed=5), tiny.tokenizer)
    path = load_manifest(tmp_path / "b").graph_file("recommender.token_norms")
    assert not check("recommender.token_norms", "token_norm", path, "fp32", other, cases=1).passed
    assert isinstance(kinds.export_kind("token_norm", "recommender.token_norms", other), cls)


def test_an_exporter_class_needs_its_core_kind(registries):
    with pytest.raises(TypeError, match="core class of kind 'mystery'"):
        @kinds.register
        class Mystery(kinds.ExportKind):
            name = "mystery"


# ---------------------------------------------------------------- a decoder family, registered in a test


def test_a_decoder_family_subclass_wins_for_the_models_it_supports(registries, tiny):
    from mmsrarec_edge.exporter.bundle import ExportInputs, MLLMInput, _graph_plan

    base = kinds.EXPORT_KINDS["decoder_yes_no"][-1]  # the kind's own class (families register after it)

    @kinds.register
    class Tagged(base):
        """A family that differs only by a marker: chosen for tagged models, the base class for the others."""

        @classmethod
        def supports(cls, model):
            return None if getattr(model, "family_tag", False) else "not a tagged model"

        def parity(self, run):
            acc, info = super().parity(run)
            return acc, {**info, "family": 1.0}

    profile = parse_profile({"graphs": ["recommender.decoder"]})
    inputs = ExportInputs(recommender=MLLMInput(tiny.model, tiny.tokenizer), yes_no_ids=(tiny.yes_id, tiny.no_id))
    ((_, kind, _),) = _graph_plan(inputs, profile)
    assert type(kind) is base
    tiny.model.family_tag = True
    try:
        ((_, kind, _),) = _graph_plan(inputs, profile)
        assert type(kind) is Tagged
        res = check("recommender.decoder", "decoder_yes_no", tiny.path("decoder_yes_no"), "fp32", tiny.model,
                    cases=1, yes_no_ids=(tiny.yes_id, tiny.no_id))
        assert res.passed and res.info["family"] == 1.0
    finally:
        del tiny.model.family_tag


def test_an_unsupported_model_is_refused_unless_the_kind_is_optional(registries, tiny):
    from mmsrarec_edge.exporter.bundle import ExportInputs, MLLMInput

    base = kinds.EXPORT_KINDS["decoder_yes_no"][-1]
    inputs = ExportInputs(recommender=MLLMInput(tiny.model, tiny.tokenizer))
    kinds.EXPORT_KINDS["decoder_yes_no"] = [type("Picky", (base,), {"supports": classmethod(lambda c, m: "too picky")})]
    with pytest.raises(kinds.UnsupportedModel, match="cannot export recommender.decoder: too picky"):
        kinds.plan_graph("recommender.decoder", inputs)
    kinds.EXPORT_KINDS["decoder_yes_no"][0].optional = True
    assert kinds.plan_graph("recommender.decoder", inputs)[::2] == (None, "too picky")


# ---------------------------------------------------------------- the gate measures the runtime's code


def test_the_gate_runs_the_runtimes_loops_and_session_options(tiny, monkeypatch):
    """Calls land in the runtime's scorer and greedy loop, on sessions opened by the runtime with the variant."""
    from mmsrarec_edge.runtime import scorer, sessions, summarizer

    calls = {"candidate_logits": 0, "greedy_steps": 0, "variants": []}
    real_logits, real_steps, real_open = scorer.CandidateScorer.candidate_logits, summarizer.greedy_steps, \
        sessions.open_session

    def spy_logits(self, *a, **kw):
        calls["candidate_logits"] += 1
        return real_logits(self, *a, **kw)

    def spy_steps(*a, **kw):
        calls["greedy_steps"] += 1
        return real_steps(*a, **kw)

    def spy_open(path, cfg, trt_options=None, variant=None):
        calls["variants"].append((cfg.provider, variant))
        return real_open(path, cfg, trt_options, variant)

    monkeypatch.setattr(scorer.CandidateScorer, "candidate_logits", spy_logits)
    monkeypatch.setattr(kinds, "greedy_steps", spy_steps)
    monkeypatch.setattr(sessions, "open_session", spy_open)
    yes_no = (tiny.yes_id, tiny.no_id)
    for graph, kind, path in (("recommender.decoder", "decoder_yes_no", "decoder_yes_no"),
                              ("recommender.scorer", "decoder_scorer", "scorer"),
                              ("summarizer.decoder", "decoder_last", "decoder_last")):
        assert check(graph, kind, tiny.path(path), "fp32", tiny.model, cases=2, yes_no_ids=yes_no).passed
    assert calls["candidate_logits"] == 4 and calls["greedy_steps"] == 2
    assert calls["variants"] == [("cpu", "fp32")] * 3


def test_a_bug_in_the_runtimes_scoring_fails_the_gate(tiny, monkeypatch):
    """The expanded-KV path with a KV expansion that swaps the KV heads (a layout bug): a good graph, refused."""
    from mmsrarec_edge.runtime import scorer

    good = check("recommender.decoder", "decoder_yes_no", tiny.path("decoder_yes_no"), "fp32", tiny.model, cases=1,
                 yes_no_ids=(tiny.yes_id, tiny.no_id))
    assert good.passed
    real = scorer.expand_kv
    monkeypatch.setattr(scorer, "expand_kv", lambda past, n, how="view": real(
        {k: np.flip(v, axis=1) for k, v in past.items()}, n, how))
    bad = check("recommender.decoder", "decoder_yes_no", tiny.path("decoder_yes_no"), "fp32", tiny.model, cases=1,
                yes_no_ids=(tiny.yes_id, tiny.no_id))
    assert not bad.passed and bad.metrics["score"] > 100 * good.metrics["score"]


def test_a_bug_in_the_runtimes_padding_fails_the_summarizer_gate(tiny, monkeypatch):
    """Greedy generation with right-padded prompts (the last slot of a short row is padding): refused."""
    from mmsrarec_edge.runtime.llm import Embedder

    real = Embedder.embed_rows
    monkeypatch.setattr(Embedder, "embed_rows", lambda self, rows, pad_id, left, features=None: real(
        self, rows, pad_id, False, features))
    res = check("summarizer.decoder", "decoder_last", tiny.path("decoder_last"), "fp32", tiny.model, cases=2)
    assert not res.passed and res.metrics["logits"] > 1e-2


# ---------------------------------------------------------------- session options for fp16 on the CPU


def test_fp16_graphs_open_at_extended_optimization_on_the_cpu(tmp_path):
    """ORT 1.32 crashes building a level-ALL CPU session for the fp16 SASRec encoder: the runtime opens fp16 graphs
    at EXTENDED there (in a subprocess: a regression would be a segfault)."""
    from mmsrarec_edge.exporter.graphs import export_graph
    from mmsrarec_edge.exporter.variants import to_fp16
    from mmsrarec_edge.models.sasrec import SASRec, SASRecConfig
    from mmsrarec_edge.runtime.sessions import optimization_level

    assert {optimization_level("cpu", v) for v in ("fp16", "fp32", "int8", "int4", None)} == {"ORT_ENABLE_EXTENDED"}
    assert {optimization_level(p, v) for p in ("cuda", "tensorrt") for v in ("fp32", "int8", "fp16", None)} == {
        "ORT_ENABLE_ALL"}
    torch.manual_seed(3)
    net = SASRec(40, SASRecConfig(hidden=32, layers=2, heads=2, max_len=12)).eval()
    fp32 = export_graph(kinds.export_kind("user_encoder", "sasrec.user_encoder", net).spec(net), tmp_path / "u.onnx")
    to_fp16(fp32, tmp_path / "u.fp16.onnx")
    code = ("import json, sys, numpy as np\n"
            "from mmsrarec_edge.runtime.llm import UserEncoder\n"
            "from mmsrarec_edge.runtime.sessions import SessionConfig, open_session\n"
            "enc = UserEncoder(open_session(sys.argv[1], SessionConfig('cpu', threads=1), variant='fp16'))\n"
            "print(json.dumps(enc(np.tile(np.arange(1, 13), (3, 1))).tolist()))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "u.fp16.onnx")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = net.user_embedding(torch.from_numpy(np.tile(np.arange(1, 13), (3, 1)))).detach().numpy()
    assert np.abs(np.array(json.loads(r.stdout)) - ref).max() < 1e-2 * np.abs(ref).max()

"""A tiny train-and-evaluate run of the recommender (SynthConfig(n_items=40, n_users=60)): the directory it writes,
leak-free training windows, evaluation through `load_scorer` and the `evaluate` CLI, the ablation switches."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mmsrarec_edge.core.errors import UserError
from mmsrarec_edge.core.prompt import PromptConfig
from mmsrarec_edge.core.retrieval import RetrievalConfig
from mmsrarec_edge.data.protocol import ProtocolConfig, build_protocol, save_protocol
from mmsrarec_edge.data.synth import SynthConfig, generate
from mmsrarec_edge.recommend.pipeline import RecommenderConfig, run
from mmsrarec_edge.recommend.tasks import TaskConfig
from mmsrarec_edge.recommend.train import TrainConfig


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from mmsrarec_edge.core.keyword_store import ItemKeywords, write_keyword_store
    from mmsrarec_edge.models.sasrec import SASRecConfig
    from mmsrarec_edge.models.sasrec_train import SASRecTrainConfig, train_sasrec

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rec")
    ds = generate(SynthConfig(seed=5, n_items=40, n_users=60, min_len=8, max_len=16), root / "data")
    proto = build_protocol(ds, ProtocolConfig(seed=1, n_negatives=10, max_cases_per_user=3))
    save_protocol(proto, root / "protocol")
    sas, _ = train_sasrec(proto, SASRecConfig(hidden=16, layers=1, heads=2, max_len=16),
                          SASRecTrainConfig(epochs=3, patience=3))
    sas.save(root / "sasrec")
    rows = [ItemKeywords(i, [it.attributes["colour"], it.attributes["category"]],
                         [it.attributes["material"], it.attributes["style"]], True) for i, it in ds.items.items()]
    write_keyword_store(root / "kw.parquet", rows)
    return root, proto


def tiny_config(**kw) -> RecommenderConfig:
    cfg = RecommenderConfig(
        mllm={"hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 1},
        prompt=PromptConfig(item_keywords=3, candidate_keywords=4, collab_items=3, collab_item_keywords=2,
                            rank_hint=False),
        retrieval=RetrievalConfig(stride=3),
        tasks=TaskConfig(windows_per_user=2, negatives=2),
        train=TrainConfig(epochs=2, batch_size=16, lr=3e-3, val_cases=12, threads=1))
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def trained(parts):
    root, _ = parts
    meta = run(root / "data", root / "protocol", root / "sasrec", root / "kw.parquet", root / "rec", tiny_config())
    return root / "rec", meta


def test_directory_layout_and_metadata(trained, parts):
    out, meta = trained
    assert (out / "model" / "config.json").is_file() and any((out / "model").glob("*.safetensors"))
    assert (out / "retrieval" / "users.hnsw").is_file() and (out / "sasrec" / "model.safetensors").is_file()
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.bin"))
    saved = json.loads((out / "recommender.json").read_text())
    assert saved["yes_token_id"] != saved["no_token_id"]
    assert saved["n_rescore"] == 50  # the runtime's default rescoring depth (a bundle's config recommender.n_rescore)
    assert saved["retrieval"]["items_per_neighbour"] in (1, 2, 3)  # chosen on validation
    assert saved["retrieval"]["recall"]["recall@3"] > 0.9
    assert saved["inputs"]["protocol"]["train_users"] == parts[1].train_users
    assert saved["training"]["best_epoch"] in (1, 2)
    assert {"rec", "next_keywords", "next_title", "item_title", "item_keywords"} <= set(
        saved["training"]["examples_per_epoch"])


def test_load_scorer_scores_the_saved_candidates(trained, parts):
    from mmsrarec_edge.evaluate import run_evaluation
    from mmsrarec_edge.recommend.scoring import load_scorer

    out, _ = trained
    proto = parts[1]
    scorer = load_scorer(out, proto)
    rep = run_evaluation(proto, {"rec": scorer}, "val", n_boot=10)
    scores = rep["_scores"]["rec"]
    assert scores.shape == proto.val.candidates.shape
    assert ((scores > 0) & (scores < 1)).all() and scores.std() > 0
    assert 0.0 <= rep["results"]["rec"]["HR@5"]["mean"] <= 1.0
    # deterministic: the same directory scores the same cases identically
    assert np.array_equal(load_scorer(out, proto)(proto.val), scores)


def test_refuses_a_protocol_whose_test_users_it_trained_on(trained, parts):
    from mmsrarec_edge.recommend.scoring import load_scorer

    out, _ = trained
    proto = parts[1]
    swapped = dataclasses.replace(proto, train_users=proto.test_users + proto.val_users,
                                  val_users=proto.train_users[:5], test_users=proto.train_users[5:10])
    with pytest.raises(UserError, match="trained on"):
        load_scorer(out, swapped)


def test_training_windows_do_not_leak(parts):
    from mmsrarec_edge.core.context import ItemText, PromptMaker
    from mmsrarec_edge.core.retrieval import RetrievalIndex, build_retrieval
    from mmsrarec_edge.models.sasrec import SASRecModel
    from mmsrarec_edge.recommend.tasks import build_windows

    root, proto = parts
    sas = SASRecModel.load(root / "sasrec")
    seqs = proto.train_sequences()
    build_retrieval(root / "leak_idx", seqs, sas.user_embeddings, lambda i: [f"kw{i}"], RetrievalConfig(stride=2))
    idx = RetrievalIndex(root / "leak_idx")
    items = {i: ItemText(f"t{i}", [f"kw{i}"]) for i in proto.items}
    seen_users = []

    class Spy(RetrievalIndex):  # the real index; records which users each window retrieved
        def __init__(self):
            self.__dict__.update(idx.__dict__)

        def neighbours(self, embeddings, k=None, exclude=None):
            res = super().neighbours(embeddings, k, exclude)
            seen_users.extend(zip(exclude, [[n.user_id for n in r] for r in res]))
            return res

    maker = PromptMaker(items, lambda s: [hash(w) % 1000 for w in s.split()], None, PromptConfig(rank_hint=False),
                        Spy())
    windows = build_windows(seqs, maker, sas.user_embeddings, TaskConfig(windows_per_user=3))
    assert seen_users and all(u not in nbs for u, nbs in seen_users)
    for w in windows:
        seq = seqs[w.user]
        assert w.positive == seq[w.position]
        # the prefix's history part holds only items before the target
        hist = [hash(f"kw{i}") % 1000 for i in seq[:w.position][-5:]]
        assert all(h in w.prefix for h in hist)


def test_cli_ablation_and_evaluate(parts, tmp_path):
    from typer.testing import CliRunner

    from mmsrarec_edge.cli import app

    root, proto = parts
    runner = CliRunner()
    res = runner.invoke(app, ["train", "recommender", "--dataset", str(root / "data"), "--protocol",
                              str(root / "protocol"), "--sasrec", str(root / "sasrec"), "--keywords",
                              str(root / "kw.parquet"), "--out", str(tmp_path / "noret"), "--no-retrieval",
                              "--no-aux", "--epochs", "1", "--max-steps", "3", "--val-cases", "5", "--hidden", "32",
                              "--windows-per-user", "1"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "noret" / "recommender.json").read_text())
    assert meta["ablations"]["no_retrieval"] and meta["ablations"]["no_aux"]
    assert not (tmp_path / "noret" / "retrieval").exists()
    assert set(meta["training"]["examples_per_epoch"]) == {"rec"}
    res = runner.invoke(app, ["evaluate", str(root / "protocol"), "--out", str(tmp_path / "rep"), "--no-popularity",
                              "--recommender", f"w/o retrieval={tmp_path / 'noret'}", "--bootstrap", "10"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert list(report["results"]) == ["w/o retrieval"]


def test_cross_fitted_rank_hint_comes_from_a_model_that_never_saw_the_user(parts, tmp_path):
    from mmsrarec_edge.core.context import ItemText, PromptMaker
    from mmsrarec_edge.models.sasrec import SASRecModel
    from mmsrarec_edge.recommend.crossfit import load_folds, train_folds
    from mmsrarec_edge.recommend.model_dir import sasrec_ranks
    from mmsrarec_edge.recommend.tasks import build_windows

    root, proto = parts
    sas = SASRecModel.load(root / "sasrec")
    train_folds(proto, sas, tmp_path / "folds", k=2, max_epochs=2, patience=1)
    folds = load_folds(tmp_path / "folds", proto)
    assert [len(f[0]) for f in folds] == [len(proto.train_users) - len(proto.train_users) // 2,
                                         len(proto.train_users) // 2]
    assert set().union(*(f[0] for f in folds)) == set(proto.train_users)
    items = {i: ItemText(f"t{i}", [f"kw{i}"]) for i in proto.items}
    maker = PromptMaker(items, lambda s: [len(w) for w in s.split()], None, PromptConfig(rank_hint=True),
                        ranks=sasrec_ranks(sas))
    windows = build_windows(proto.train_sequences(), maker, sas.user_embeddings, TaskConfig(windows_per_user=2),
                            rank_folds=folds)
    for w in windows:
        held, embed, ranks = next(f for f in folds if w.user in f[0])
        assert w.rank_source is ranks
        seq = proto.sequences[w.user][:w.position]
        assert np.allclose(w.rank_embedding, embed([seq])[0], atol=1e-5)
    with pytest.raises(UserError, match="another protocol"):
        load_folds(tmp_path / "folds", dataclasses.replace(proto, train_users=proto.train_users[:-1]))


def test_rank_hint_recommender_trains_and_scores(parts, tmp_path):
    from mmsrarec_edge.recommend.scoring import load_scorer

    root, proto = parts
    cfg = tiny_config(crossfit_folds=2)
    cfg.prompt.rank_hint = True
    cfg.train.epochs, cfg.train.max_steps = 1, 4
    meta = run(root / "data", root / "protocol", root / "sasrec", root / "kw.parquet", tmp_path / "rank", cfg)
    assert meta["rank_hint"]["crossfit"]["k"] == 2
    assert (tmp_path / "rank" / "sasrec_folds" / "folds.json").is_file()
    scores = load_scorer(tmp_path / "rank", proto)(proto.test)
    assert scores.shape == proto.test.candidates.shape and np.isfinite(scores).all()
    # exported (real-prompt parity inputs need a rank per candidate) and served torch-free: same scores
    from mmsrarec_edge.bench.variants import runtime_scores
    from mmsrarec_edge.exporter.bundle import export_bundle
    from mmsrarec_edge.exporter.inputs import load_inputs
    from mmsrarec_edge.exporter.profile import parse_profile
    from mmsrarec_edge.runtime.recommender import Recommender

    profile = parse_profile({"graphs": ["recommender.embed", "recommender.decoder", "sasrec.user_encoder"],
                             "parity": {"cases": 1}})
    export_bundle(load_inputs(None, tmp_path / "rank", None, root / "kw.parquet", root / "data"), profile,
                  tmp_path / "b")
    cases = proto.test.subset(np.arange(6))
    got = runtime_scores(Recommender(tmp_path / "b"), cases)
    assert np.abs(got - scores[:6]).max() < 1e-4


def test_exported_variants_rank_like_pytorch_on_the_protocol(trained, parts, tmp_path):
    """The trained recommender, exported fp32 + int8, scored by the torch-free runtime on the saved validation
    candidates: fp32 ranks every case exactly as PyTorch does; int8 is smaller and its agreement is measured."""
    from mmsrarec_edge.bench.variants import markdown, variant_report
    from mmsrarec_edge.exporter.bundle import export_bundle
    from mmsrarec_edge.exporter.inputs import load_inputs
    from mmsrarec_edge.exporter.profile import parse_profile

    out, _ = trained
    root = parts[0]
    profile = parse_profile({"name": "both", "precision": "fp32", "variants": ["fp32", "int8"],
                             "graphs": ["recommender.embed", "recommender.decoder", "sasrec.user_encoder"],
                             "fp32_graphs": ["sasrec.user_encoder"], "parity": {"cases": 1}})
    export_bundle(load_inputs(None, out, None, root / "kw.parquet", root / "data"), profile, tmp_path / "b")
    rep = variant_report({"both": tmp_path / "b"}, out, root / "protocol", split="val", max_cases=12)
    rows = {r["precision"]: r for r in rep["rows"]}
    assert set(rows) == {"fp32", "int8"} and rep["cases"] == 12
    assert rows["fp32"]["same_order_beyond_1e-5"] == 1.0 and rows["fp32"]["max_abs_score_diff"] < 1e-4
    assert rows["fp32"]["identical_ranking"] >= 0.9  # exact equality too, but for near-ties that rounding may swap
    assert rows["fp32"]["delta_vs_pytorch"]["AUC"] == pytest.approx(0.0, abs=1e-9)
    assert rows["int8"]["bytes"]["recommender.decoder"] < 0.8 * rows["fp32"]["bytes"]["recommender.decoder"]
    assert rows["int8"]["max_abs_score_diff"] > 0  # quantization really happened
    assert 0.0 <= rows["int8"]["top5_overlap"] <= 1.0
    assert "| both | int8 |" in markdown(rep)
    # a scorer-only bundle (merged_decoder = "fallback") is scored through its scorer graph; a refused export is a row
    scorer_only = parse_profile({"name": "scorer", "precision": "fp32", "merged_decoder": "fallback",
                                 "graphs": ["recommender.embed", "recommender.decoder", "recommender.scorer",
                                            "sasrec.user_encoder"], "parity": {"cases": 1}})
    export_bundle(load_inputs(None, out, None, root / "kw.parquet", root / "data"), scorer_only, tmp_path / "s")
    rep2 = variant_report({"scorer": tmp_path / "s", "gone": "parity gate failed: score 0.3 > 0.2"}, out,
                          root / "protocol", split="val", max_cases=12)
    (row,) = rep2["rows"]
    assert "recommender.decoder" not in row["graph_variants"] and row["graph_variants"]["recommender.scorer"] == "fp32"
    assert row["max_abs_score_diff"] < 1e-4
    assert rep2["refused"] == [{"bundle": "gone", "reason": "parity gate failed: score 0.3 > 0.2"}]
    assert "| gone | refused at export |" in markdown(rep2)

"""`mmsrarec-edge export` and `build-engine` as a user runs them (subprocess): one-line errors, a verified bundle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MMSRAREC_QUIET": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmsrarec_edge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def model_dirs(tiny_synth, tmp_path_factory):
    import torch

    from mmsrarec_edge.models.mllm import MLLMConfig, build_mllm, build_tokenizer, save_mllm
    from mmsrarec_edge.models.sasrec import SASRec, SASRecConfig, SASRecModel

    root = tmp_path_factory.mktemp("cli-models")
    tok = build_tokenizer()
    save_mllm(build_mllm(MLLMConfig(decoder="llama", seed=4), tok), tok, root / "rec" / "model")
    (root / "rec" / "recommender.json").write_text('{"answer_words": ["yes", "no"]}')
    torch.manual_seed(0)
    SASRecModel(SASRec(len(tiny_synth.items), SASRecConfig(hidden=16, layers=1, max_len=8)),
                sorted(tiny_synth.items)).save(root / "sas")
    prof = root / "small.toml"
    prof.write_text('name = "small"\nprecision = "int8"\ngraphs = ["recommender.decoder", "sasrec.user_encoder"]\n'
                    'fp32_graphs = ["sasrec.user_encoder"]\n[parity]\ncases = 1\n')
    return root, prof


def test_export_cli_writes_a_verified_bundle(model_dirs, tiny_synth, tmp_path):
    from mmsrarec_edge.core.bundle import load_manifest

    root, prof = model_dirs
    out = tmp_path / "bundle"
    r = run_cli("export", "--profile", prof, "--recommender", root / "rec", "--sasrec", root / "sas",
                "--dataset", tiny_synth.root, "--out", out, "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "parity recommender.decoder [int8]: logits" in r.stdout and f"wrote {out}" in r.stdout
    man = load_manifest(out)
    assert set(man.graphs) == {"recommender.decoder", "sasrec.user_encoder"}
    # The dataset adds real parity inputs to the profile's random cases.
    parity = man.graphs["recommender.decoder"]["variants"]["int8"]["parity"]
    assert parity["cases"] == 1 and parity["real_cases"] >= 1
    assert man.data["profile"]["source"] == str(prof)


def test_export_cli_errors_are_one_line(model_dirs, tmp_path):
    root, prof = model_dirs
    bad = tmp_path / "bad.toml"
    bad.write_text('precision = "int8"\nmax_candidates = 3\n')
    r = run_cli("export", "--profile", bad, "--out", tmp_path / "b")
    assert r.returncode == 2
    assert "unknown key 'max_candidates'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("export", "--profile", prof, "--sasrec", root / "sas", "--out", tmp_path / "b")
    assert r.returncode == 2 and "no recommender model was given" in r.stderr
    assert not (tmp_path / "b").exists()


def test_build_engine_cli_errors(tmp_path):
    r = run_cli("build-engine", tmp_path / "nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "TensorRT is not installed" in r.stderr
    else:  # pragma: no cover - device machines
        assert "not found" in r.stderr


def test_recommender_sasrec_copy_must_match(model_dirs, tiny_synth, tmp_path):
    """The recommender dir's own SASRec built its retrieval index: a different --sasrec is refused, none uses the
    copy."""
    import shutil

    import torch

    from mmsrarec_edge.core.errors import UserError
    from mmsrarec_edge.core.io_utils import sha256_file
    from mmsrarec_edge.exporter.inputs import load_inputs
    from mmsrarec_edge.models.sasrec import SASRec, SASRecConfig, SASRecModel

    root, _ = model_dirs
    rec = tmp_path / "rec"
    shutil.copytree(root / "rec", rec)
    torch.manual_seed(1)
    SASRecModel(SASRec(len(tiny_synth.items), SASRecConfig(hidden=16, layers=1, max_len=8)),
                sorted(tiny_synth.items)).save(rec / "sasrec")
    with pytest.raises(UserError, match="is not the SASRec model the recommender's retrieval index was built with"):
        load_inputs(None, rec, root / "sas", None, None)
    inp = load_inputs(None, rec, None, None, None)
    assert sha256_file(rec / "sasrec" / "model.safetensors") != sha256_file(root / "sas" / "model.safetensors")
    assert torch.equal(inp.sasrec.net.item_emb.weight, SASRecModel.load(rec / "sasrec").net.item_emb.weight)

"""A text-only sequential set in the sequence-per-row atomic layout (`<name>.train/.valid/.test.inter` with
`item_id_list`, plus `<name>.item`), as LLM-recommendation repositories ship it, run through the whole chain as a user
runs it (subprocesses): data import -> data protocol -> train sasrec --threads -> evaluate -> export -> recommend, with
the catalog matching the model. Issue 17's findings 4, 5, 7 and 8 are checked here; 1-3 and 6 (import and protocol)
in test_data_importers.py and test_protocol.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # the chain takes about a minute on 2 cores

ROOT = Path(__file__).resolve().parents[1]
N_POPULAR, N_RARE, N_USERS = 30, 12, 60
HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def cli(*args: str, ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MMSRAREC_QUIET": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "mmsrarec_edge.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=ROOT)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def write_sequence_source(src: Path, seed: int = 0) -> dict[int, list[int]]:
    """`beauty.{train,valid,test}.inter` (one row per user and split: history -> next item; the test row holds the
    whole sequence) and `beauty.item` (titles with HTML entities, an unused field). Items 1..N_POPULAR recur with a
    sequential pattern; items 100.. occur once or twice, so the 5-core filter drops them. Returns the sequences."""
    rng = np.random.default_rng(seed)
    src.mkdir(parents=True)
    seqs = {}
    for u in range(1, N_USERS + 1):
        start, n = int(rng.integers(1, N_POPULAR + 1)), int(rng.integers(8, 12))
        seq = [(start + 2 * k) % N_POPULAR + 1 for k in range(n)]  # distinct, a shared "next item" pattern
        if u <= 2 * N_RARE:
            seq.insert(int(rng.integers(1, n - 3)), 100 + (u - 1) % N_RARE)
        seqs[u] = seq
    for split, cut in (("train", 3), ("valid", 2), ("test", 1)):
        rows = [f"{u}\t{' '.join(map(str, s[:-cut]))}\t{s[-cut]}\n" for u, s in seqs.items()]
        (src / f"beauty.{split}.inter").write_text(HEADER + "".join(rows))
    items = [*range(1, N_POPULAR + 1), *range(100, 100 + N_RARE)]
    (src / "beauty.item").write_text("item_id:token\ttitle:token_seq\tsales_rank:float\n" + "".join(
        f"{i}\tPok&eacute;mon &amp; Friends&rsquo;   vol.&nbsp;{i}\t{i * 10}\n" for i in items))
    return seqs


def write_recommender_dir(out: Path, fingerprint: str) -> None:
    """A tiny random recommender directory as `train recommender` lays it out (model/ + recommender.json naming the
    dataset's fingerprint): what export reads, without minutes of training."""
    import torch

    from mmsrarec_edge.models.mllm import MLLMConfig, build_mllm, build_tokenizer, save_mllm

    torch.set_num_threads(1)
    tok = build_tokenizer()
    save_mllm(build_mllm(MLLMConfig(hidden_size=64, intermediate_size=128, seed=0), tok), tok, out / "model")
    (out / "recommender.json").write_text(json.dumps({
        "answer_words": ["yes", "no"], "n_rescore": 6,
        "prompt": {"history_len": 5, "candidate_image": False, "rank_hint": True},
        "inputs": {"dataset": {"fingerprint": fingerprint}}}))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Every step once; the tests below read what they produced."""
    from mmsrarec_edge.data import load_dataset
    from mmsrarec_edge.data.protocol import fingerprint

    w = tmp_path_factory.mktemp("seqchain")
    seqs = write_sequence_source(w / "src")
    out = {"seqs": seqs, "w": w}
    out["import"] = cli("data", "import", w / "src", "--out", w / "ds")
    out["protocol"] = cli("data", "protocol", w / "ds", "--out", w / "p", "--negatives-per-case", "5")
    out["sasrec"] = cli("train", "sasrec", w / "p", "--out", w / "sas", "--threads", "1", "--epochs", "2",
                        "--hidden", "16", "--layers", "1", "--heads", "1", "--max-len", "8")
    out["evaluate"] = cli("evaluate", w / "p", "--sasrec", w / "sas", "--out", w / "report", "--bootstrap", "20")
    write_recommender_dir(w / "rec", fingerprint(load_dataset(w / "ds")))
    prof = w / "text.toml"
    prof.write_text('name = "text"\nprecision = "fp32"\ngraphs = ["recommender.vision", "recommender.embed", '
                    '"recommender.decoder", "sasrec.user_encoder"]\n[parity]\ncases = 1\n')
    out["profile"] = prof
    common = ["--profile", prof, "--recommender", w / "rec", "--sasrec", w / "sas", "--threads", "1"]
    out["export"] = cli("export", *common, "--dataset", w / "ds", "--out", w / "bundle")
    # the same dataset with one more interaction: another fingerprint
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(w / "ds", w / "ds2")
    t = pq.read_table(w / "ds2" / "interactions.parquet")
    pq.write_table(pa.concat_tables([t, pa.table({"user_id": [1], "item_id": [1], "timestamp": [99]},
                                                 schema=t.schema)]), w / "ds2" / "interactions.parquet")
    out["export_refused"] = cli("export", *common, "--dataset", w / "ds2", "--out", w / "refused", ok=False)
    out["export_all"] = cli("export", *common, "--dataset", w / "ds2", "--out", w / "bundle_all", "--catalog", "all",
                            "--allow-dataset-mismatch")
    return out


def test_sequence_per_row_set_imports_and_trains(chain):
    """Finding 1 end to end, and finding 8: the sequences are expanded, SASRec trains with --threads, evaluate runs."""
    assert "detected format recbole: RecBole atomic files, one sequence per row" in chain["import"].stderr
    stats = json.loads(chain["import"].stdout.splitlines()[0])
    assert stats["users"] == N_USERS and stats["interactions"] == sum(map(len, chain["seqs"].values()))
    p = json.loads(chain["protocol"].stdout.splitlines()[0])
    assert p["items"] == N_POPULAR and p["val_cases"] > 0 and p["test_cases"] > 0  # the rare items: k-core dropped
    assert "best epoch" in chain["sasrec"].stdout
    assert "SASRec" in chain["evaluate"].stdout and (chain["w"] / "report" / "report.json").is_file()


def test_catalog_matches_the_model_and_recommend_stays_within_budget(chain):
    """Finding 4: the catalog holds the items SASRec knows, the k-core-dropped ones are counted at export; the default
    recommend scores at most the rescoring budget and says it in the JSON."""
    from mmsrarec_edge.core.bundle import load_manifest

    assert f"catalog: {N_POPULAR} items, {N_POPULAR} known to the models; {N_RARE} dataset items left out" \
        in chain["export"].stdout
    bundle = chain["w"] / "bundle"
    config = load_manifest(bundle).config()
    sas_items = json.loads((bundle / "sasrec" / "item_ids.json").read_text())["item_ids"]
    assert config["catalog"]["count"] == len(sas_items) == N_POPULAR
    assert config["catalog"]["left_out_items"] == N_RARE and config["catalog"]["cold_start_items"] == 0
    r = cli("recommend", bundle, "--history", "1,3,5", "--json", "--provider", "cpu")
    out = json.loads(r.stdout)
    assert out["rescore_budget"] == {"first_stage": 6, "cold_start": 6}
    assert out["candidate_mode"] == "sasrec+llm" and len(out["scored"]) == 6 and out["warnings"] == []
    assert out["items"][0]["title"].startswith("Pokémon & Friends’ vol. ")  # finding 6, as recommend shows it


def test_export_refuses_another_dataset_unless_overridden(chain):
    """Finding 4: a dataset whose fingerprint is not the models' is refused in one line; the override warns."""
    r = chain["export_refused"]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "is not the dataset the recommender was trained on" in r.stderr and "--allow-dataset-mismatch" in r.stderr
    assert not (chain["w"] / "refused").exists()
    warned = [ln for ln in chain["export_all"].stderr.splitlines() if ln.startswith("warning:")]
    assert any("exporting anyway (--allow-dataset-mismatch)" in ln for ln in warned), chain["export_all"].stderr


def test_cold_start_items_beyond_the_budget_and_unknown_histories_warn(chain):
    """Findings 4 and 5 on an `--catalog all` bundle: the k-core-dropped items are cold-start (counted at export);
    the LLM rescores at most the budget of them, with a warning; a history of items SASRec does not know warns (stderr
    and JSON) and retrieves no neighbours."""
    assert f"{N_RARE} cold-start items the models do not know" in chain["export_all"].stdout
    bundle = chain["w"] / "bundle_all"
    r = cli("recommend", bundle, "--history", "1,3", "--rescore", "4", "--json", "--provider", "cpu")
    out = json.loads(r.stdout)
    assert len(out["scored"]) == 8 and out["rescore_budget"] == {"first_stage": 4, "cold_start": 4}
    cold = [w for w in out["warnings"] if "cold-start items" in w]
    assert cold and f"{N_RARE} cold-start items" in cold[0] and "rescoring budget of 4" in cold[0]
    assert f"warning: {cold[0]}" in r.stderr

    r = cli("recommend", bundle, "--history", "100,101", "--json", "--provider", "cpu")
    out = json.loads(r.stdout)
    unknown = [w for w in out["warnings"] if "known to the user encoder" in w]
    assert unknown and "none of the 2 history items" in unknown[0] and f"warning: {unknown[0]}" in r.stderr
    assert out["neighbours"] == [] and out["candidate_mode"] in ("popularity+llm", "catalog-order+llm")
    r = cli("recommend", bundle, "--history", "1,100", "--json", "--provider", "cpu")
    assert any("1 of the 2 history items are unknown to the user encoder" in w
               for w in json.loads(r.stdout)["warnings"])


def test_text_only_dataset_skips_the_vision_graphs(chain):
    """Finding 7: the profile asks for recommender.vision; on a text-only dataset it is skipped, the reason in the
    manifest's graphs_skipped and on the export's output."""
    from mmsrarec_edge.core.bundle import load_manifest

    man = load_manifest(chain["w"] / "bundle")
    assert "recommender.vision" not in man.graphs
    assert "has no item images (text-only)" in man.data["graphs_skipped"]["recommender.vision"]
    assert "skipped recommender.vision: the dataset beauty has no item images" in chain["export"].stdout

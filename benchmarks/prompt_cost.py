"""What the compact prompt saves: suffix tokens and FLOPs per recommendation, compact vs verbose (issue 15 item 6).

For each dataset trained by benchmarks/prompt_style_report.sh (work/recommender/<dataset>/rec_compact), every test
case's prompt is built both ways by the recommender's own prompt builder (same tokenizer, keywords, SASRec ranks and
collaborative context; only `prompt.style` differs), and the FLOPs of one recommendation (1 prefix + 21 suffixes,
bench/latency.recommendation_flops: the decoder's weights and attention; the LM head is read at two rows only) are
counted at each size of the model ladder (mmsrarec_edge/bench/ladder.py), with that ladder rung's dimensions.
Writes <out>/prompt_cost.{json,md}.

Usage: .venv/bin/python benchmarks/prompt_cost.py [--work work/recommender] [--out benchmarks/results/...]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASETS = ("synthetic", "ml100k_mm")


def ladder_dims() -> dict[str, dict]:
    """Ladder rung -> the dimensions recommendation_flops needs (bench/scale.decoder_dims, as the scale report's
    floors use them), with the decoder's matmul parameter count."""
    from mmsrarec_edge.bench.ladder import LADDER, SIZES
    from mmsrarec_edge.bench.scale import decoder_dims

    out = {}
    for name in (n for n in LADDER if n != "0.5b-qwenvocab"):  # same FLOPs as 0.5b
        d = decoder_dims(SIZES[name])
        out[name] = {**d, "decoder_matmul_params": d["weight_flops_per_token"] // 2}
    return out


def token_counts(rec_dir: Path, split: str = "test") -> dict:
    """Per case: prefix tokens, and the suffix tokens of all its candidates, for both styles."""
    from mmsrarec_edge.data.protocol import load_protocol
    from mmsrarec_edge.recommend.model_dir import RecommenderDir

    rd = RecommenderDir.load(rec_dir)
    protocol = load_protocol(Path(rd.meta["inputs"]["protocol"]["path"]))
    cases = protocol.test if split == "test" else protocol.val
    emb = rd.sasrec.user_embeddings(cases.prefixes)
    counts = {}
    for style in ("compact", "verbose"):
        rd.prompt_cfg = replace(rd.prompt_cfg, style=style)
        maker = rd.prompt_maker()
        collab = maker.collab(emb, exclude=cases.user_id.tolist())
        pre, suf = [], []
        for r in range(len(cases)):
            p, s = maker.case(cases.prefixes[r], emb[r], cases.candidates[r].tolist(), collab=collab[r])
            pre.append(len(p))
            suf.append([len(x) for x in s])
        counts[style] = {"prefix": pre, "suffixes": suf}
    return {"cases": len(cases), "candidates": int(cases.candidates.shape[1]), "counts": counts,
            "trained_style": rd.meta.get("prompt", {}).get("style", "verbose")}


def summarize(tc: dict, dims: dict[str, dict]) -> dict:
    from mmsrarec_edge.bench.latency import recommendation_flops

    out = {"cases": tc["cases"], "candidates": tc["candidates"], "styles": {}}
    for style, c in tc["counts"].items():
        suffix_total = [sum(s) for s in c["suffixes"]]
        per_size = {}
        for name, d in dims.items():
            f = [recommendation_flops(p, s, d) for p, s in zip(c["prefix"], c["suffixes"])]
            per_size[name] = float(np.mean(f))
        out["styles"][style] = {"prefix_tokens": float(np.mean(c["prefix"])),
                                "suffix_tokens_per_candidate": float(np.mean([np.mean(s) for s in c["suffixes"]])),
                                "suffix_tokens_per_recommendation": float(np.mean(suffix_total)),
                                "flops_per_recommendation": per_size}
    v, k = out["styles"]["verbose"], out["styles"]["compact"]
    vs, ks = v["suffix_tokens_per_recommendation"], k["suffix_tokens_per_recommendation"]
    out["saved"] = {
        "suffix_tokens_per_recommendation": vs - ks, "suffix_token_share": 1 - ks / vs,
        "gflops_per_recommendation": {n: (v["flops_per_recommendation"][n] - k["flops_per_recommendation"][n]) / 1e9
                                      for n in dims},
        "flops_share": {n: 1 - k["flops_per_recommendation"][n] / v["flops_per_recommendation"][n] for n in dims}}
    return out


def markdown(report: dict) -> str:
    lines = ["# The compact prompt: suffix tokens and FLOPs per recommendation", "",
             "One recommendation = 1 shared prefix + 21 candidate suffixes (the protocol's 1 positive + 20 negatives), "
             "every test case's prompt built by the recommender's own builder in both styles (same tokenizer, "
             "keywords, ranks, collaborative context). FLOPs: the decoder's weights and attention at each model "
             "ladder rung's dimensions (bench/latency.recommendation_flops), mean over the test cases.", ""]
    for ds, r in report["datasets"].items():
        k, v, s = r["styles"]["compact"], r["styles"]["verbose"], r["saved"]
        lines += [f"## {ds} ({r['cases']} test cases)", "",
                  "| style | prefix tokens | suffix tokens per candidate | suffix tokens per recommendation |",
                  "|---|---|---|---|",
                  f"| verbose | {v['prefix_tokens']:.1f} | {v['suffix_tokens_per_candidate']:.1f} | "
                  f"{v['suffix_tokens_per_recommendation']:.0f} |",
                  f"| compact | {k['prefix_tokens']:.1f} | {k['suffix_tokens_per_candidate']:.1f} | "
                  f"{k['suffix_tokens_per_recommendation']:.0f} |", "",
                  f"Saved per recommendation: {s['suffix_tokens_per_recommendation']:.0f} suffix tokens "
                  f"({100 * s['suffix_token_share']:.0f}% of the suffix tokens).", "",
                  "| model size | decoder matmul params | GFLOP verbose | GFLOP compact | saved GFLOP | saved |",
                  "|---|---|---|---|---|---|"]
        for n, d in report["ladder"].items():
            lines.append(f"| {n} | {d['decoder_matmul_params'] / 1e6:.1f}M | "
                         f"{v['flops_per_recommendation'][n] / 1e9:.2f} | {k['flops_per_recommendation'][n] / 1e9:.2f}"
                         f" | {s['gflops_per_recommendation'][n]:.2f} | {100 * s['flops_share'][n]:.0f}% |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "recommender")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recommender" / "prompt_style")
    a = ap.parse_args()
    from mmsrarec_edge.core.io_utils import ensure_writable_dir, write_json, write_text

    dims = ladder_dims()
    report = {"ladder": dims, "datasets": {}}
    for ds in DATASETS:
        rec_dir = a.work / ds / "rec_compact"
        if not (rec_dir / "recommender.json").exists():
            print(f"skipping {ds}: no recommender at {rec_dir}", file=sys.stderr)
            continue
        print(f"{ds}: building every test case's prompt in both styles ...", file=sys.stderr)
        report["datasets"][ds] = summarize(token_counts(rec_dir), dims)
    if not report["datasets"]:
        sys.exit(f"no trained recommender under {a.work}: run benchmarks/prompt_style_report.sh first")
    out = ensure_writable_dir(a.out)
    write_json(out / "prompt_cost.json", report)
    write_text(out / "prompt_cost.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()

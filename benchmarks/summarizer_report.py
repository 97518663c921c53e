"""Stage 1 report: the summarizer before and after RL on the synthetic catalog and (when present) ml100k_mm.

For each dataset it runs the CLI (`data synth` / `data import`, `train summarizer`, `summarize`), then writes
benchmarks/results/summarizer/{report.json, report.md, reward_curve.png}: mean R, R_info, R_recon, R_len and keyword
count on held-out items for the pseudo-keyword targets, the SFT model and the SFT+GRPO model (greedy decoding), the RL
minus SFT difference with a paired bootstrap 95% CI, keyword precision/recall against the ground-truth attributes on
the synthetic set, and the per-step GRPO reward curve.

Usage: .venv/bin/python benchmarks/summarizer_report.py [--work work/summarizer] [--ml100k ../shared/data/ml100k_mm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "summarizer"
# ml100k_mm: 1,682 items with long plot texts; training items are subsampled to stay within minutes on 2 cores.
# Its perplexities are an order of magnitude above the synthetic set's, so R_recon gets a smaller weight there
# (b * R_recon would otherwise drown R_info; see report.md).
DATASETS = {
    "synthetic": [],
    "ml100k_mm": ["--max-train-items", "500", "--recon-weight", "0.01"],
}


def cli(*args) -> None:
    cmd = [str(ROOT / ".venv" / "bin" / "mmsrarec-edge"), *map(str, args)]
    if not Path(cmd[0]).exists():
        cmd = [sys.executable, "-m", "mmsrarec_edge.cli", *map(str, args)]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def paired_bootstrap(before: list[float], after: list[float], n: int = 2000, seed: int = 0) -> dict:
    d = np.asarray(after) - np.asarray(before)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(1)
    return {"mean": float(d.mean()), "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "better": int((d > 0).sum()), "worse": int((d < 0).sum()), "n": int(len(d))}


def run_dataset(name: str, data: Path, work: Path, extra: list[str]) -> dict:
    model = work / name / "model"
    t = time.perf_counter()
    cli("train", "summarizer", data, "--out", model, *extra)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    cli("summarize", data, "--model", model, "--out", work / name / "keywords.parquet")
    summarize_s = time.perf_counter() - t
    log = json.loads((model / "train_log.json").read_text())
    ev = log["eval"]
    res = {"dataset": log["dataset"], "config": log["config"], "timings_s": {**log["timings_s"],
           "train_command": round(train_s, 1), "summarize_command": round(summarize_s, 1)},
           "eval": {k: {t: {m: v for m, v in d.items() if m != "per_prompt_total"} for t, d in ev[k].items()}
                    for k in ev},
           "rl_minus_sft_total": paired_bootstrap(ev["sft"]["all"]["per_prompt_total"],
                                                  ev["rl"]["all"]["per_prompt_total"]),
           "grpo": log["grpo"],
           # the real set's licence forbids redistributing it: no text-derived samples of it in a committed report
           "samples": log["samples"][:8] if name == "synthetic" else []}
    sys.path.insert(0, str(ROOT))
    from mmsrarec_edge.core.keyword_store import read_keyword_store

    store = read_keyword_store(work / name / "keywords.parquet")
    res["store"] = {"items": len(store),
                    "mean_image_keywords": float(np.mean([len(r.image_keywords) for r in store.values()
                                                          if r.has_image])),
                    "mean_text_keywords": float(np.mean([len(r.text_keywords) for r in store.values()])),
                    "empty_text_keywords": int(sum(not r.text_keywords for r in store.values()))}
    return res


def smooth(x, k=9):
    x = np.asarray(x, float)
    if len(x) < k:
        return x
    pad = np.pad(x, (k // 2, k // 2), mode="edge")
    return np.convolve(pad, np.ones(k) / k, mode="valid")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    sys.path.insert(0, str(ROOT))
    from mmsrarec_edge.core.io_utils import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        steps = [e["step"] for e in res["grpo"]]
        for key, colour, label in (("total", "k", "all"), ("image_total", "tab:blue", "image task"),
                                   ("text_total", "tab:orange", "text task")):
            ys = [e.get(key, np.nan) for e in res["grpo"]]
            ax.plot(steps, ys, color=colour, alpha=0.2)
            ax.plot(steps, smooth(ys), color=colour, label=f"{label} (moving mean of 9)")
        ax.axhline(res["eval"]["sft"]["all"]["total"], color="grey", ls="--", label="SFT, held-out, greedy")
        ax.axhline(res["eval"]["rl"]["all"]["total"], color="green", ls="--", label="RL, held-out, greedy")
        ax.set_title(f"GRPO reward per step: {name}")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("R = a R_info + b R_recon + c R_len (sampled, train items)")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def markdown(results: dict, skipped: dict) -> str:
    lines = ["# Summarizer (stage 1): before and after RL", "",
             "Held-out items (never trained on), greedy decoding, both tasks (image and text prompts). `targets` "
             "scores the SFT pseudo-keywords themselves. R = a R_info + b R_recon + c R_len; R_recon = -perplexity "
             "of the item text given the keywords under the frozen reference LM. Regenerate: "
             "`.venv/bin/python benchmarks/summarizer_report.py`.", ""]
    for name, res in results.items():
        c, d = res["config"], res["dataset"]
        lines += [f"## {name}", "",
                  f"{d['items']} items: {d['train_items']} trained on, {d['held_out_items']} held out "
                  f"({d['evaluated_items']} evaluated); SFT targets: {d['targets']}; weights a={c['a']}, b={c['b']}, "
                  f"c={c['c']}; SFT {c['sft_steps']} steps, GRPO {c['grpo_steps']} steps x {c['grpo_batch_size']} "
                  f"prompts x {c['num_generations']} samples, LoRA r={c['lora_r']}, beta={c['beta']}.", ""]
        gold = "gold_precision" in res["eval"]["sft"]["all"]
        head = ("| model | task | R | R_info | R_recon | R_len | keywords | empty |"
                + (" gold P | gold R | gold F1 |" if gold else ""))
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for stage, label in (("targets", "pseudo-keywords"), ("sft", "SFT"), ("rl", "SFT + GRPO")):
            for task in ("all", "image", "text"):
                e = res["eval"][stage].get(task)
                if not e:
                    continue
                row = (f"| {label} | {task} | {e['total']:.4f} | {e['r_info']:.4f} | {e['r_recon']:.3f} | "
                       f"{e['r_len']:.2f} | {e['keywords']:.2f} | {e['empty']:.2f} |")
                if gold:
                    row += f" {e['gold_precision']:.3f} | {e['gold_recall']:.3f} | {e['gold_f1']:.3f} |"
                lines.append(row)
        b = res["rl_minus_sft_total"]
        lines += ["", f"RL - SFT, mean total reward per held-out prompt: **{b['mean']:+.4f}** (paired bootstrap 95% CI "
                  f"{b['ci95'][0]:+.4f} .. {b['ci95'][1]:+.4f}; better on {b['better']}, worse on {b['worse']} of "
                  f"{b['n']} prompts).", ""]
        t = res["timings_s"]
        lines += [f"Time (2 shared CPU cores): train command {t['train_command']:.0f} s (reference LM "
                  f"{t.get('reference_lm', 0):.0f} s, SFT {t.get('sft', 0):.0f} s, GRPO {t.get('grpo', 0):.0f} s), "
                  f"summarize {t['summarize_command']:.0f} s for {res['store']['items']} items.", ""]
        if not res["samples"]:
            continue
        lines += ["Examples (held-out):", "", "| item | task | target | SFT | SFT + GRPO |", "|---|---|---|---|---|"]
        for s in res["samples"]:
            lines.append(f"| {s['item_id']} | {s['task']} | {', '.join(s['target'])} | {', '.join(s['sft'])} | "
                         f"{', '.join(s.get('rl', []))} |")
        lines.append("")
    for name, why in skipped.items():
        lines += [f"## {name}", "", f"Skipped: {why}", ""]
    lines += ["![reward curve](reward_curve.png)", "",
              "The curve is GRPO's sampled reward on *training* items; the dashed lines are greedy decoding on "
              "held-out items. The two differ in level, mostly through R_recon: the reference LM was trained on the "
              "training items' texts, so their perplexity is far lower than an unseen item's "
              "(on ml100k_mm ~1-10 vs ~215).",
              "", "Diagnosis on ml100k_mm: the targets are TF-IDF words of long plot texts, mostly rare names; a "
              "2-layer decoder trained for minutes on 500 items does not learn to copy them for unseen items, so its "
              "SFT keywords are generic or invented WordPiece fragments (R_info 0.16 vs 0.44 for the targets). GRPO "
              "raises R_info and shortens the lists, which is what the reward asks for; a pretrained MLLM (the "
              "paper's setting, `train summarizer --base DIR`) is what closes the rest of the gap.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "summarizer")
    ap.add_argument("--ml100k", type=Path,
                    default=Path(os.environ.get("ML100K", ROOT.parent / "shared" / "data" / "ml100k_mm")))
    ap.add_argument("--only", choices=list(DATASETS), default=None)
    ap.add_argument("--render", action="store_true", help="only rewrite report.md and the plot from report.json")
    args = ap.parse_args()
    if args.render:
        rep = json.loads((OUT / "report.json").read_text())
        plot(rep["results"], OUT / "reward_curve.png")
        (OUT / "report.md").write_text(markdown(rep["results"], rep["skipped"]))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work.resolve()
    results, skipped = {}, {}
    for name, extra in DATASETS.items():
        if args.only and name != args.only:
            continue
        data = work / name / "data"
        if name == "synthetic":
            cli("data", "synth", "--out", data)
        elif (args.ml100k / "interactions.csv").exists():
            cli("data", "import", args.ml100k, "--out", data)
        else:
            skipped[name] = f"not found at {args.ml100k} (its licence forbids shipping it; see README)"
            print(f"skipping {name}: {skipped[name]}")
            continue
        results[name] = run_dataset(name, data, work, extra)
    OUT.mkdir(parents=True, exist_ok=True)
    report_path = OUT / "report.json"
    if args.only and report_path.exists():  # refresh one dataset, keep the other's figures
        old = json.loads(report_path.read_text())
        results = {**{k: v for k, v in old.get("results", {}).items() if k not in results}, **results}
    (report_path).write_text(json.dumps({"results": results, "skipped": skipped}, indent=1) + "\n")
    plot(results, OUT / "reward_curve.png")
    (OUT / "report.md").write_text(markdown(results, skipped))
    print((OUT / "report.md").read_text())


if __name__ == "__main__":
    main()

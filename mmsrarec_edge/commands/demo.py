"""`mmsrarec-edge demo`: the whole chain on the embedded default, end to end, in one command.

data synth -> protocol -> train SASRec -> train summarizer (SFT + GRPO) -> summarize (keyword store) -> train
recommender (retrieval + multi-task SFT) -> evaluate (popularity, SASRec, MMSRARec-edge) -> export (the packaged
cpu-fp32-int8 profile, parity-gated) -> recommend (torch-free runtime) -> bench (latency vs peers). Each step runs the
same CLI command a user would, writes into OUT/<step>, and is skipped when its output exists (use --fresh to redo
everything). The steps' own output goes to stderr; stdout gets the evaluation report and the timings. Sizes are the
embedded default's, with fewer summarizer steps, fewer evaluation windows and a shorter benchmark than the stages'
defaults, so the chain runs on a 2-core machine (README.md gives the measured time).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import typer

from .common import TOOLS, status

# Both precisions: the bench then runs fp32 and int8 in one run and checks the fp32 ranking against PyTorch.
PROFILE = "cpu-fp32-int8"


def demo(
    out: Path = typer.Option(Path("work/demo"), "--out", "-o", help="Working directory for every step's output."),
    fresh: bool = typer.Option(False, help="Recompute every step even if its output exists."),
    seed: int = typer.Option(0, help="Seed of the synthetic catalog."),
    bench: bool = typer.Option(True, "--bench/--no-bench", help="Finish with the latency benchmark."),
    profile: str = typer.Option(PROFILE, help="Export profile: a packaged profile's name or a TOML file."),
):
    """Run the end-to-end demo on the synthetic catalog (the embedded default)."""
    from ..core.config import profile_path
    from ..core.errors import UserError
    from ..core.io_utils import ensure_writable_dir, write_json

    ensure_writable_dir(out)
    profile_path(profile)  # an unknown profile fails now, not after the training steps
    d = {k: out / k for k in ("data", "protocol", "sasrec", "summarizer", "recommender", "report", "bundle", "bench")}
    kw = out / "keywords.parquet"
    timings: dict[str, float] = {}

    def step(name: str, done: Path, *args) -> None:
        t = time.perf_counter()
        if fresh or not done.exists():
            typer.secho(f"\n[demo] {name}", bold=True, err=True)
            r = subprocess.run([sys.executable, "-m", "mmsrarec_edge.cli", *map(str, args)], stdout=sys.stderr)
            if r.returncode != 0:
                raise UserError(f"demo step '{name}' failed (exit {r.returncode})", "see the message above")
        else:
            status(f"[demo] {name}: reusing {done}")
        timings[name] = round(time.perf_counter() - t, 1)

    step("data synth", d["data"], "data", "synth", "--out", d["data"], "--seed", seed)
    # 3 evaluation windows per user instead of 10 (about 300 test cases): the demo's evaluation and benchmark stay
    # quick; the committed reports use the full protocol.
    step("protocol", d["protocol"], "data", "protocol", d["data"], "--out", d["protocol"], "--max-cases-per-user", 3)
    step("train sasrec", d["sasrec"], "train", "sasrec", d["protocol"], "--out", d["sasrec"])
    # Fewer steps than `train summarizer`'s defaults: the summarizer is the demo's longest step.
    step("train summarizer", d["summarizer"], "train", "summarizer", d["data"], "--out", d["summarizer"],
         "--recon-steps", 150, "--sft-steps", 300, "--steps", 30)
    step("summarize", kw, "summarize", d["data"], "--model", d["summarizer"], "--out", kw)
    step("train recommender", d["recommender"], "train", "recommender", "--dataset", d["data"], "--protocol",
         d["protocol"], "--sasrec", d["sasrec"], "--keywords", kw, "--out", d["recommender"],
         "--windows-per-user", 4)  # half the default training windows: the demo's largest step, kept to minutes
    step("evaluate", d["report"], "evaluate", d["protocol"], "--sasrec", d["sasrec"], "--recommender",
         d["recommender"], "--out", d["report"], "--title", "Demo: synthetic catalog (test split)")
    step("export", d["bundle"], "export", "--profile", profile, "--summarizer", d["summarizer"], "--recommender",
         d["recommender"], "--keywords", kw, "--dataset", d["data"], "--out", d["bundle"])
    first_user = sorted(json.loads((d["protocol"] / "protocol.json").read_text())["train_users"])[0]
    step("recommend", out / "_never", "recommend", d["bundle"], "--user", first_user, "--top-k", 5)
    if bench:
        step("bench", d["bench"], "bench", d["bundle"], "--recommender", d["recommender"], "--protocol", d["protocol"],
             "--out", d["bench"], "--candidate-counts", "1,10,20,50", "--history-lens", "5", "--repeats", 7,
             "--max-seconds", 3, "--agreement-cases", 100)
    write_json(out / "timings.json", timings)
    typer.echo("\n" + (d["report"] / "report.md").read_text())
    if bench:
        status(f"latency report: {d['bench'] / 'report.md'}")
    typer.echo(json.dumps({"timings_s": timings, "total_s": round(sum(timings.values()), 1)}))


def register(apps) -> None:
    apps["app"].command("demo", rich_help_panel=TOOLS)(demo)

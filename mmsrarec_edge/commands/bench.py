"""`mmsrarec-edge bench BUNDLE`: latency report (JSON + Markdown + PNG) against PyTorch and optimum peers.

The Markdown report goes to stdout, progress to stderr. Without `--out` the report files go to a new temporary
directory (`mmsrarec-bench-*` under the system's temp folder, printed on stderr), never into the source tree.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import RUNTIME, config_command, renamed, status, threads


def bench(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `export`)."),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Report directory (default: a new mmsrarec-bench-* directory in the temp folder)."),
    recommender: Path = typer.Option(None, "--recommender",
                                     help="The PyTorch recommender dir: enables the PyTorch and optimum peers."),
    protocol: Path = typer.Option(None, "--protocol",
                                  help="Protocol dir: enables the ranking-agreement section (needs --recommender)."),
    candidate_counts: str = typer.Option(None, "--candidate-counts",
                                         help="Candidate counts to time, comma-separated @candidate_counts"),
    history_lens: str = typer.Option(None, "--history-lens",
                                     help="History lengths to time, comma-separated @history_lengths"),
    repeats: int = typer.Option(None, help="Timed calls per peer and cell (fewer when a peer exceeds --max-seconds) "
                                           "@repeats"),
    max_seconds: float = typer.Option(None, help="Time cap per peer and cell @max_seconds"),
    threads_: int = typer.Option(None, "--threads", help="Intra-op threads for every peer, at most the CPU count "
                                                         "@threads"),
    agreement_cases: int = typer.Option(None, help="Test cases for the ranking agreement @agreement_cases"),
    candidates_old: str = typer.Option(None, "--candidates", hidden=True, help="Old name of --candidate-counts."),
    histories_old: str = typer.Option(None, "--histories", hidden=True, help="Old name of --history-lens."),
):
    """Benchmark one recommendation's latency per stage and against peers, in one run."""
    from ..bench import latency
    from ..bench import report as rep
    from ..core.config import apply
    from ..core.errors import UserError
    from ..core.outputs import REPORT, check_output_dir

    if out is not None:
        check_output_dir(out, REPORT)
    candidate_counts = renamed(candidate_counts, candidates_old, "--candidate-counts", "--candidates")
    history_lens = renamed(history_lens, histories_old, "--history-lens", "--histories")

    def ints(s: str | None, what: str) -> tuple[int, ...] | None:
        if s is None:
            return None
        try:
            vals = tuple(int(x) for x in s.split(",") if x.strip())
        except ValueError:
            raise UserError(f"--{what} must be comma-separated integers, got {s!r}") from None
        if not vals or min(vals) < 1:
            raise UserError(f"--{what} needs positive integers, got {s!r}")
        return vals

    cfg = apply(latency.BenchConfig(), {
        "candidate_counts": ints(candidate_counts, "candidate-counts"),
        "history_lengths": ints(history_lens, "history-lens"), "repeats": repeats, "max_seconds": max_seconds,
        "threads": threads(threads_), "agreement_cases": agreement_cases})
    if out is None:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="mmsrarec-bench-"))
    report = latency.run(bundle, out, recommender, protocol, cfg, log=status)
    rep.write(report, out)
    typer.echo((out / "report.md").read_text())
    status(f"wrote {out}")


def _defaults():
    from ..bench.latency import BenchConfig

    return BenchConfig()


def register(apps) -> None:
    apps["app"].command("bench", cls=config_command(_defaults), rich_help_panel=RUNTIME)(bench)

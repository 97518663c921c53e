"""`mmsrarec-edge bench BUNDLE`: latency report (JSON + Markdown + PNG) against PyTorch and optimum peers."""

from __future__ import annotations

from pathlib import Path

import typer


def bench(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `export`)."),
    out: Path = typer.Option(Path("benchmarks/results/latency"), "--out", "-o", help="Report directory."),
    recommender: Path = typer.Option(None, "--recommender", help="The PyTorch recommender dir: enables the PyTorch and optimum peers."),
    protocol: Path = typer.Option(None, "--protocol", help="Protocol dir: enables the ranking-agreement section (needs --recommender)."),
    candidates: str = typer.Option("1,5,10,20,50,100", help="Candidate counts, comma-separated."),
    histories: str = typer.Option("1,3,5", help="History lengths, comma-separated."),
    repeats: int = typer.Option(15, help="Timed calls per peer and cell (fewer when a peer exceeds --max-seconds)."),
    max_seconds: float = typer.Option(8.0, help="Time cap per peer and cell."),
    threads: int = typer.Option(1, help="Intra-op threads for every peer."),
    agreement_cases: int = typer.Option(200, help="Test cases for the ranking agreement."),
):
    """Benchmark one recommendation's latency per stage and against peers, in one run."""
    from ..bench import latency
    from ..bench import report as rep
    from ..core.errors import UserError

    def ints(s: str, what: str) -> tuple[int, ...]:
        try:
            vals = tuple(int(x) for x in s.split(",") if x.strip())
        except ValueError:
            raise UserError(f"--{what} must be comma-separated integers, got {s!r}") from None
        if not vals or min(vals) < 1:
            raise UserError(f"--{what} needs positive integers, got {s!r}")
        return vals

    cfg = latency.BenchConfig(candidate_counts=ints(candidates, "candidates"), history_lengths=ints(histories, "histories"),
                              repeats=repeats, max_seconds=max_seconds, threads=threads, agreement_cases=agreement_cases)
    report = latency.run(bundle, out, recommender, protocol, cfg, log=typer.echo)
    rep.write(report, out)
    typer.echo((out / "report.md").read_text())


def register(apps) -> None:
    apps["app"].command("bench")(bench)

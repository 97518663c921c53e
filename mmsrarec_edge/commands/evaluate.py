"""`mmsrarec-edge evaluate`: score models on the saved protocol; write report.json, report.md, report.png.

Model options are added by stages: `--sasrec DIR` and `--popularity` here; the recommender stage adds its own.
"""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    protocol_dir: Path = typer.Argument(..., help="Protocol directory (from `data protocol`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Report directory to write."),
    sasrec: list[Path] = typer.Option([], "--sasrec", help="SASRec model directory (repeatable)."),
    popularity: bool = typer.Option(True, "--popularity/--no-popularity", help="Include the popularity baseline."),
    recommender: list[Path] = typer.Option([], "--recommender", help="MMSRARec recommender directory (repeatable; NAME=DIR to name it)."),
    split: str = typer.Option("test", help="test or val."),
    title: str = typer.Option("", help="Report title."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the 95% CIs."),
):
    """Evaluate models under the paper's protocol (HR@K, NDCG@K, AUC with 95% CIs)."""
    from ..core.errors import UserError
    from ..core.progress import progress_bar
    from ..data.protocol import load_protocol
    from ..evaluate import run_evaluation, write_report

    if split not in ("test", "val"):
        raise UserError(f"--split must be test or val, got {split!r}")
    p = load_protocol(protocol_dir)
    scorers = {}
    if popularity:
        from ..models.popularity import Popularity

        pop = Popularity(p.train_sequences())
        scorers["popularity"] = lambda c: pop.score(None, c.candidates)
    for path in sasrec:
        from ..models.sasrec import SASRecModel

        m = SASRecModel.load(path)
        name = "SASRec" if len(sasrec) == 1 else f"SASRec ({path.name})"
        scorers[name] = lambda c, m=m: m.score(c.prefixes, c.candidates)
    for spec in recommender:
        name, _, path = str(spec).partition("=") if "=" in str(spec) else ("MMSRARec-edge", "", str(spec))
        from ..recommend.scoring import load_scorer  # the recommender stage

        scorers[name] = load_scorer(Path(path), p)
    if not scorers:
        raise UserError("no model to evaluate", "pass --sasrec DIR, --recommender DIR or --popularity")
    with progress_bar("scoring models", len(scorers)) as adv:
        report = run_evaluation(p, scorers, split, progress=adv, n_boot=bootstrap)
    write_report(report, out, title=title)
    typer.echo((out / "report.md").read_text())


def register(apps) -> None:
    apps["app"].command("evaluate")(evaluate)

"""`mmsrarec-edge evaluate`: score models on the saved protocol; write report.json, report.md, report.png.

Models: the popularity baseline (`--popularity`, on by default), SASRec directories (`--sasrec DIR`, repeatable),
MMSRARec recommender directories (`--recommender [NAME=]DIR`, repeatable) and, with `--keywords STORE`, the content-only
baseline (models/content.py: logistic regression on keyword-overlap and keyword-transition features, fitted on the
training users' windows; the row "content", plus "content + popularity" when the popularity row is on), all on the
same saved candidates. The Markdown report goes to stdout.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from .common import EVALUATE


class Split(str, Enum):
    test = "test"
    val = "val"


def evaluate(
    protocol_dir: Path = typer.Argument(..., help="Protocol directory (from `data protocol`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Report directory to write."),
    sasrec: list[Path] = typer.Option([], "--sasrec", help="SASRec model directory (repeatable)."),
    popularity: bool = typer.Option(True, "--popularity/--no-popularity", help="Include the popularity baseline."),
    recommender: list[Path] = typer.Option([], "--recommender",
                                           help="MMSRARec recommender directory (repeatable; NAME=DIR to name it)."),
    keywords: Path = typer.Option(None, "--keywords",
                                  help="Keyword store (from `summarize`): adds the content-only baseline rows "
                                       "(content; content + popularity with --popularity)."),
    split: Split = typer.Option(Split.test, help="The protocol's split to score (val: for model selection)."),
    title: str = typer.Option("", help="Report title."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the 95% CIs."),
):
    """Evaluate models under the paper's protocol (HR@K, NDCG@K, AUC with 95% CIs)."""
    from ..core.errors import UserError
    from ..core.outputs import REPORT, check_output_dir
    from ..core.progress import progress_bar
    from ..data.protocol import load_protocol
    from ..evaluate import run_evaluation, write_report

    check_output_dir(out, REPORT)
    p = load_protocol(protocol_dir)
    if not len(p.test if split == Split.test else p.val):  # a protocol written before `data protocol` refused these
        raise UserError(f"protocol {protocol_dir} has 0 {split.value} cases: there is nothing to evaluate",
                        "rebuild it with `mmsrarec-edge data protocol` (its message says what the data lacks)")
    scorers = {}
    if popularity:
        from ..models.popularity import Popularity

        pop = Popularity(p.train_sequences())
        scorers["popularity"] = lambda c: pop.score(None, c.candidates)
    content_info = {}
    if keywords is not None:
        scorers.update(_content_scorers(p, keywords, popularity, content_info))
    for path in sasrec:
        from ..models.sasrec import SASRecModel

        m = SASRecModel.load(path)
        name = "SASRec" if len(sasrec) == 1 else f"SASRec ({path.name})"
        scorers[name] = lambda c, m=m: m.score(c.prefixes, c.candidates)
    for spec in recommender:
        name, _, path = str(spec).partition("=") if "=" in str(spec) else ("MMSRARec-edge", "", str(spec))
        from ..recommend.scoring import load_scorer

        scorers[name] = load_scorer(Path(path), p)
    if not scorers:
        raise UserError("no model to evaluate", "pass --sasrec DIR, --recommender DIR or --popularity")
    with progress_bar("scoring models", len(scorers)) as adv:
        report = run_evaluation(p, scorers, split.value, progress=adv, n_boot=bootstrap)
    if content_info:
        report["content_baseline"] = content_info
    write_report(report, out, title=title)
    typer.echo((out / "report.md").read_text())


def _content_scorers(p, keywords: Path, popularity: bool, info: dict) -> dict:
    """The content-only rows: fitted on the protocol's training users, with the keyword store's keywords."""
    from ..core.keyword_store import read_keyword_store
    from ..models.content import ContentBaseline, ContentConfig
    from .common import status

    store = read_keyword_store(keywords)  # a missing or malformed store: one line naming the file
    kws = {i: r.keywords for i, r in store.items()}
    if not any(kws.values()):
        from ..core.errors import UserError

        raise UserError(f"keyword store {keywords} has no keywords at all: the content baseline has nothing to read")
    out = {}
    for name, pop in (("content", False), ("content + popularity", True)) if popularity else (("content", False),):
        cfg = ContentConfig(history_len=p.config.history_len, negatives=p.config.n_negatives, popularity=pop,
                            seed=p.config.seed)
        model = ContentBaseline(kws, p.items, cfg).fit(p.train_sequences())
        info[name] = model.info
        status(f"{name}: fitted on {model.info['windows']} training windows, "
               f"{model.info['vocabulary']} keywords; weights {model.info['weights']}")
        out[name] = lambda c, m=model: m.score(c.histories(m.cfg.history_len), c.candidates)
    return out


def register(apps) -> None:
    apps["app"].command("evaluate", rich_help_panel=EVALUATE)(evaluate)

"""Rich progress bars for long steps, shared by every stage. They draw on stderr, so a command's stdout carries only
its result (`... --json | python3 -m json.tool` works); MMSRAREC_QUIET=1 turns them off."""

from __future__ import annotations

import contextlib
import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(description: str, total: int | None):
    """Yield `advance(n=1, **fields)`; `fields` may update the description suffix, e.g. loss=0.3."""
    disable = os.environ.get("MMSRAREC_QUIET") == "1"
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True),
                    disable=disable, transient=False)
    with prog:
        task = prog.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields):
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            prog.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance

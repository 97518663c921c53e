"""The one Typer app. It parses arguments, calls one stage function and renders errors.

Each stage registers its commands from `mmsrarec_edge/commands/<stage>.py` (a `register(apps)` function), so the CLI
grows without one file owning every stage. Command modules import torch/transformers only inside command bodies: the
torch-free runtime commands must work on a slim install. Errors a user can cause (UserError) print as one line with a
hint and exit 2; anything else prints one line and exits 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer
from rich.console import Console

from .errors import UserError

STAGES = ["data", "train", "recommend_train", "evaluate", "summarize", "export", "runtime", "bench", "demo", "serve"]

err_console = Console(stderr=True)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train MMSRARec, export it to ONNX/TensorRT and serve recommendations on edge devices.")
data_app = typer.Typer(no_args_is_help=True, help="Create, import and inspect datasets.")
train_app = typer.Typer(no_args_is_help=True, help="Train models (PyTorch).")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
APPS = {"app": app, "data": data_app, "train": train_app}

_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _state["debug"] = debug or os.environ.get("MMSRAREC_DEBUG") == "1"


for _stage in STAGES:
    try:
        _mod = importlib.import_module(f".commands.{_stage}", __package__)
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__package__}.commands.{_stage}":
            raise
        continue
    _mod.register(APPS)


def main() -> None:
    """Entry point with error rendering (the console script). Usage errors stay Typer's (exit 2, with usage)."""
    debug = "--debug" in sys.argv or os.environ.get("MMSRAREC_DEBUG") == "1"
    try:
        app()
    except UserError as exc:
        if debug:
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {exc.message}" + (f" [dim]hint: {exc.hint}[/]" if exc.hint else ""),
                          highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc} [dim](run with --debug for the traceback)[/]",
                          highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The one Typer app. It parses arguments, calls one stage function and renders errors.

Each stage registers its commands from `mmsrarec_edge/commands/<stage>.py` (a `register(apps)` function), so the CLI
grows without one file owning every stage. Command modules import torch/transformers only inside command bodies: the
torch-free runtime commands must work on a slim install. Errors a user can cause (UserError) print as one line with a
hint and exit 2, as do usage errors; anything else prints one line and exits 1; `--debug` shows the traceback.
`--help` lists the commands in panels in pipeline order (data, train, evaluate, export, runtime, serving, tools);
results go to stdout, progress bars and status lines to stderr (commands/common.py).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import signal
import sys
import traceback

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from .commands.common import DATA, PANELS, TRAIN
from .core.errors import UserError

STAGES = ["data", "train", "recommend_train", "summarize", "evaluate", "byom", "export", "runtime", "scale", "bench",
          "serve", "demo", "env"]


class PipelineGroup(TyperGroup):
    """Lists commands by help panel in pipeline order (commands.common.PANELS), a panel's group (`data`, `train`)
    before its other commands, then in registration order."""

    def list_commands(self, ctx) -> list[str]:
        rank = {p: k for k, p in enumerate(PANELS)}

        def key(name: str) -> tuple[int, int]:
            cmd = self.commands[name]
            return rank.get(getattr(cmd, "rich_help_panel", None), len(rank)), 0 if isinstance(cmd, TyperGroup) else 1

        return sorted(super().list_commands(ctx), key=key)


err_console = Console(stderr=True)
app = typer.Typer(cls=PipelineGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train MMSRARec, export it to ONNX/TensorRT and serve recommendations on edge devices.")
data_app = typer.Typer(no_args_is_help=True, help="Create, import and inspect datasets; build the protocol.")
train_app = typer.Typer(no_args_is_help=True, help="Train models (PyTorch).")
app.add_typer(data_app, name="data", rich_help_panel=DATA)
app.add_typer(train_app, name="train", rich_help_panel=TRAIN)
APPS = {"app": app, "data": data_app, "train": train_app}


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("mmsrarec-edge")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree that is not installed
        from . import __version__

        return __version__


def _print_version(show: bool) -> None:
    if show:
        typer.echo(f"mmsrarec-edge {_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (also MMSRAREC_DEBUG=1)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
    trust_key: list[str] = typer.Option(None, "--trust-key",
                                        help="Trusted Ed25519 public key for every bundle this command opens "
                                             "(repeatable; also MMSRAREC_TRUST_KEYS and "
                                             "~/.config/mmsrarec-edge/trusted_keys/)."),
):
    """--debug is read from sys.argv by main() (errors raised while parsing need it too): declared here for --help."""
    if trust_key:
        from .core.signing import add_cli_trust_keys

        add_cli_trust_keys(trust_key)


for _stage in STAGES:
    try:
        _mod = importlib.import_module(f".commands.{_stage}", __package__)
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__package__}.commands.{_stage}":
            raise
        continue
    _mod.register(APPS)


class Terminated(BaseException):
    """SIGTERM as an exception, so `finally` blocks (atomic writes) clean up as they do on Ctrl-C. A BaseException:
    neither Typer nor `except Exception` handlers swallow it."""


def _on_sigterm(signum, frame):
    raise Terminated()


DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system"}
DISK_HINT = "free space or choose another --out; the previous output (if any) is unchanged"


def _fail(message: str, hint: str | None, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    err_console.print(f"[bold red]error:[/] {escape(message)}" + (f" [dim]hint: {escape(hint)}[/]" if hint else ""),
                      highlight=False, soft_wrap=True)
    sys.exit(code)


def _click_errors():
    """Click's exception classes: recent Typer vendors click as typer._click, older Typer uses the click package."""
    try:
        from typer._click import exceptions as ex
    except ImportError:  # pragma: no cover - older Typer
        from click import exceptions as ex
    return ex.ClickException, getattr(ex, "NoArgsIsHelpError", ()), ex.UsageError


def main() -> None:
    """Entry point with error rendering (the console script): every failure is one line on stderr, no traceback
    unless --debug. A UserError exits 2 (usage errors too), anything else 1, Ctrl-C 130 and SIGTERM 143."""
    ClickException, NoArgsIsHelpError, UsageError = _click_errors()

    debug = "--debug" in sys.argv or os.environ.get("MMSRAREC_DEBUG") == "1"
    with contextlib.suppress(ValueError):  # not in the main thread (embedded): keep the default handler
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `mmsrarec-edge data`: Typer printed the help building the exception
        sys.exit(exc.exit_code)
    except UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx else "mmsrarec-edge"
        _fail(exc.format_message(), f"see `{where} --help`", exc.exit_code, debug)
    except ClickException as exc:
        _fail(exc.format_message(), None, exc.exit_code, debug)
    except UserError as exc:
        _fail(exc.message, exc.hint, 2, debug)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted")
        sys.exit(130)
    except Terminated:
        err_console.print("terminated")
        sys.exit(143)
    except OSError as exc:
        if exc.errno in DISK_ERRORS:  # the atomic writers removed their temporary output: what was there is intact
            where = f" writing {exc.filename}" if exc.filename else ""
            _fail(f"{DISK_ERRORS[exc.errno]}{where}; nothing was replaced", DISK_HINT, 2, debug)
        _fail(f"{type(exc).__name__}: {exc}", None if debug else "run with --debug for the traceback", 1, debug)
    except Exception as exc:
        _fail(f"{type(exc).__name__}: {exc}", None if debug else "run with --debug for the traceback", 1, debug)
    if code == 130:  # Typer turns Ctrl-C inside a command into exit code 130
        err_console.print("interrupted")
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()

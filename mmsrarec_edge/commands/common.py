"""What every command module shares: the help panels in pipeline order, the option choices `--help` lists, renamed
options' hidden aliases, the thread cap, and stderr messages.

Conventions: a command's result (JSON, a table, a report) goes to stdout; progress bars, "wrote PATH" and warnings go
to stderr (`status`, `warn`), so `mmsrarec-edge CMD --json | python3 -m json.tool` works for every command.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Callable

import typer
from typer.core import TyperCommand

# `mmsrarec-edge --help` groups the commands in these panels, in this order (the pipeline's)
DATA, TRAIN, EVALUATE, EXPORT, RUNTIME, SERVING, TOOLS = ("Data", "Train", "Evaluate", "Export", "Runtime", "Serving",
                                                           "Tools")
PANELS = (DATA, TRAIN, EVALUATE, EXPORT, RUNTIME, SERVING, TOOLS)


class Provider(str, Enum):
    """--provider: onnxruntime's execution provider (auto: the fastest this onnxruntime build offers)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


class Precision(str, Enum):
    """--precision: the graph variant of a bundle to load."""

    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"
    int4 = "int4"


PROVIDER_HELP = "Execution provider (default: the fastest available)."
PRECISION_HELP = "Graph variant (default: the bundle's export-profile precision)."
THREADS_HELP = "Intra-op threads per onnxruntime session (default: onnxruntime's choice; at most the CPU count)."
CONFIG_HELP = "TOML file of the stage's settings (its config dataclass; options given here override it)."


# An option's help may end with "@key" (dotted; several comma-separated): the config setting it overrides. Help shows
# "(key; default VALUE)", VALUE read from the stage's config dataclass when help is asked for: the one source of the
# defaults, and torch is imported only for --help, never to start the CLI.
_KEYS = re.compile(r"\s*@([\w.]+(?:,[\w.]+)*)$")


def _lookup(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


def config_command(defaults: Callable[[], object]) -> type[TyperCommand]:
    """A command class whose --help fills each "@key" option help with the default from `defaults()`."""

    class ConfigCommand(TyperCommand):
        def format_help(self, ctx, formatter):
            from ..core.config import toml_value

            cfg = None
            for param in self.params:
                m = _KEYS.search(getattr(param, "help", None) or "")
                if m:
                    cfg = defaults() if cfg is None else cfg
                    keys = m.group(1).split(",")
                    v = _lookup(cfg, keys[0])
                    shown = "not set" if v is None or v == "" else f"default {toml_value(v)}"
                    param.help = f"{param.help[:m.start()]} ({', '.join(keys)}; {shown})"
            return super().format_help(ctx, formatter)

    return ConfigCommand


def value(choice: Enum | None) -> str | None:
    """An enum choice's value; None (not given, or `auto`) stays None."""
    if choice is None or choice.value == "auto":
        return None
    return choice.value


def status(message: str) -> None:
    """A status line ("wrote PATH", a step's name): stderr, so stdout carries only the result."""
    typer.echo(message, err=True)


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def renamed(new, old, new_flag: str, old_flag: str):
    """The value of an option given under its new name or its old, hidden one (kept for one release, with a
    deprecation note on stderr). Both with different values is a usage error."""
    if old is None:
        return new
    typer.echo(f"note: {old_flag} is deprecated and goes in the next release; use {new_flag}", err=True)
    if new is not None and new != old:
        raise typer.BadParameter(f"{old_flag} is the old name of {new_flag}: give one of them", param_hint=new_flag)
    return old


def threads(n: int | None, option: str = "--threads") -> int | None:
    """`n` capped at the CPU count (a warning on stderr when capped): more threads than CPUs only wait on each
    other. None stays None; values below 1 are left to the stage's own check."""
    from ..core.config import cap_threads

    capped, message = cap_threads(n, option)
    if message:
        warn(message)
    return capped

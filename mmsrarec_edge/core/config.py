"""Run settings from TOML: one strict loader for every stage's config dataclass, the packaged export profiles by name,
and the cap on thread counts. Torch-free.

Defaults live in the dataclasses only (SASRecConfig/SASRecTrainConfig, SummarizerConfig, RecommenderConfig and the
configs nested in it, the export command's ExportOptions). A run's settings are, in order of precedence: the command
line's options (each defaults to None, "not given"), then `--config FILE.toml`, then the dataclass defaults. So
`RecommenderConfig()` in Python is exactly what `train recommender` trains with no options.

A config file is either one stage's table (the dataclass's fields at the top level, sub-configs as tables, e.g.
`[train]` in a recommender file) or a pipeline file with one table per stage (`[sasrec]`, `[summarizer]`,
`[recommender]`, `[export]`), each command reading its own. Strict: an unknown key or a value of the wrong type is one
UserError naming the file and the dotted key; a typo must not silently train with a default. Types are checked against
the default value's type (bool, int, float (an integer is accepted), str, a list of the default's element type, a
table), so the loader needs neither the dataclasses' annotations nor their modules' imports. Relative paths in a file
are taken from the current directory, as on the command line. `mmsrarec-edge config STAGE` prints a stage's settings
(defaults, or a file's) as TOML (`to_toml`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError

STAGE_TABLES = ("sasrec", "summarizer", "recommender", "export")
COMMAND_LINE = "the command line"
PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"  # package data: mmsrarec_edge/profiles/*.toml


def _tomllib():
    """The stdlib TOML reader, or on Python 3.10 its `tomli` backport (the train extra installs it). Imported on use:
    the runtime commands import this module for `cap_threads` on installs without tomli."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise UserError("reading TOML on Python 3.10 needs the tomli package", "pip install tomli") from None
    return tomllib


def read_toml(path: Path | str) -> dict:
    """A TOML file as a dict; a missing, unreadable or malformed file is one UserError naming it."""
    tomllib = _tomllib()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory", "pass a .toml file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} cannot be read: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None


def read_table(path: Path | str | None, table: str) -> dict:
    """The settings of stage `table` in a config file: the whole file, or its `[table]` in a pipeline file (a file
    with a table named after any stage). No file: no settings."""
    if path is None:
        return {}
    data = read_toml(path)
    if not any(isinstance(data.get(t), dict) for t in STAGE_TABLES):
        return data
    other = [k for k in data if k not in STAGE_TABLES or not isinstance(data[k], dict)]
    if other:
        raise UserError(f"{path}: unknown key {other[0]!r} beside the stage tables",
                        f"a pipeline config holds only the tables {', '.join(f'[{t}]' for t in STAGE_TABLES)}")
    return data.get(table, {})


def _is(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _kind(default) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, (list, tuple)):
        element = type(default[0]) if len(default) else str
        return "a list of " + {float: "numbers", int: "integers", bool: "booleans"}.get(element, "strings")
    if isinstance(default, dict):
        return "a table"
    return "a string"


def check_value(default, value, source, key: str):
    """`value` checked against the type of `default` (converted where TOML's type differs: int -> float, list ->
    tuple); a mismatch is a UserError naming `source` and `key`."""
    if default is None:  # an optional setting without a default: any scalar TOML gives
        if isinstance(value, (dict, list)):
            raise UserError(f"{source}: {key} must be a single value, got {value!r}")
        return value
    ok = True
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        element = type(default[0]) if len(default) else str
        ok = isinstance(value, (list, tuple)) and all(_is(v, element) for v in value)
        value = type(default)(float(v) if element is float else v for v in value) if ok else value
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
        value = {**default, **value} if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    if not ok:
        raise UserError(f"{source}: {key} must be {_kind(default)}, got {value!r}")
    return value


def apply(cfg, data: Mapping[str, Any], source: Path | str = COMMAND_LINE, prefix: str = ""):
    """A copy of dataclass `cfg` with `data`'s settings (nested dataclasses from sub-tables), strictly checked.
    `None` values mean "not given" and are skipped. Validation in the dataclass (__post_init__) runs on the result."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"{type(cfg).__name__} is not a dataclass")
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: {prefix[:-1] or 'the config'} must be a table, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cfg) if f.init}
    changes = {}
    for key, value in data.items():
        where = prefix + key
        if key not in known:
            scope = f"[{prefix[:-1]}]" if prefix else "the top level"
            raise UserError(f"{source}: unknown key {where!r}", f"known keys at {scope}: {', '.join(sorted(known))}")
        if value is None:
            continue
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            changes[key] = apply(current, value, source, where + ".")
        else:
            changes[key] = check_value(current, value, source, where)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def nest(options: Mapping[str, Any]) -> dict:
    """Dotted option names -> nested tables: {"train.epochs": 2} -> {"train": {"epochs": 2}}; None values dropped."""
    out: dict = {}
    for key, value in options.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def build(default, config: Path | str | None, table: str, options: Mapping[str, Any] | None = None):
    """Dataclass defaults <- the config file's table <- the options given on the command line (dotted names)."""
    cfg = apply(default, read_table(config, table), config or COMMAND_LINE)
    return apply(cfg, nest(options or {}), COMMAND_LINE)


def toml_value(v) -> str:
    """One setting's value in TOML syntax (as `to_toml` writes it and `--help` shows defaults)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def to_toml(cfg) -> str:
    """A config dataclass as TOML that `apply`/`build` read back to an equal config (sub-configs and table-valued
    settings as [tables]; settings without a value (None) as comments)."""
    lines: list[str] = []

    def emit(obj, prefix: str) -> None:
        items = obj.items() if isinstance(obj, dict) else ((f.name, getattr(obj, f.name))
                                                           for f in dataclasses.fields(obj) if f.init)
        tables = []
        for key, v in items:
            if dataclasses.is_dataclass(v) or isinstance(v, dict):
                tables.append((key, v))
            elif v is None:
                lines.append(f"# {key} = (not set)")
            else:
                lines.append(f"{key} = {toml_value(v)}")
        for key, v in tables:
            lines.extend(["", f"[{prefix}{key}]"])
            emit(v, f"{prefix}{key}.")

    emit(cfg, "")
    return "\n".join(lines).lstrip("\n") + "\n"


# ---------------------------------------------------------------- export profiles


def profile_names() -> list[str]:
    """Names of the export profiles shipped with the package (mmsrarec_edge/profiles/*.toml)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def profile_path(spec: Path | str) -> Path:
    """An export profile by name (`cpu-int8`: the packaged profile) or by path (any existing .toml file)."""
    text = str(spec)
    path = Path(text)
    if path.is_file():
        return path
    if path.suffix != ".toml" and os.sep not in text and "/" not in text:
        packaged = PROFILES_DIR / f"{text}.toml"
        if packaged.is_file():
            return packaged
        raise UserError(f"unknown export profile {text!r}", f"packaged profiles: {', '.join(profile_names())}; "
                                                             "or pass a path to a profile TOML")
    raise UserError(f"export profile {path} not found", f"pass a packaged profile by name "
                                                         f"({', '.join(profile_names())}) or an existing TOML file")


# ---------------------------------------------------------------- threads


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def cap_threads(threads: int | None, option: str = "--threads") -> tuple[int | None, str | None]:
    """(threads capped at the CPU count, a warning when capped). More threads than CPUs only make the threads wait
    on each other (onnxruntime's and OpenMP's spinning workers then starve one another); None stays None."""
    if threads is None:
        return None, None
    n = cpu_count()
    if int(threads) > n:
        return n, f"{option} {threads} is more than the {n} CPUs available here: using {n}"
    return int(threads), None

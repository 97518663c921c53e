"""`mmsrarec-edge env` (what a bug report needs) and `mmsrarec-edge config STAGE` (a stage's settings as TOML).

`env` imports neither torch nor transformers: their versions come from the installed distributions' metadata, so it
answers in a second on a slim install and on a training machine alike. onnxruntime is imported (for its providers)
when installed.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from enum import Enum
from pathlib import Path

import typer

from .common import CONFIG_HELP, TOOLS

# distribution names, in the order a report lists them; the onnxruntime builds share one module
PACKAGES = ("mmsrarec-edge", "numpy", "onnxruntime", "onnxruntime-gpu", "hnswlib", "tokenizers", "safetensors",
            "pyarrow", "pillow", "typer", "rich", "torch", "transformers", "peft", "onnx", "tensorrt",
            "nvidia-pytriton", "tritonclient", "ray")
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
             "amx_int8", "asimd", "asimddp", "sve")


def package_versions() -> dict[str, str | None]:
    """Installed version of each package in PACKAGES (None: not installed), without importing any of them."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The SIMD features in CPU_FLAGS that the first CPU of /proc/cpuinfo lists (x86 `flags`, Arm `Features`);
    empty where there is no /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() in ("flags", "Features"):
            have = set(rest.split())
            return [f for f in CPU_FLAGS if f in have]
    return []


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, rest = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return rest.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def onnxruntime_info() -> dict:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"installed": False, "error": str(exc)}
    return {"installed": True, "version": ort.__version__, "providers": ort.get_available_providers(),
            "device": ort.get_device()}


def environment() -> dict:
    from ..core.config import cpu_count

    return {
        "mmsrarec_edge": {"version": package_versions()["mmsrarec-edge"], "path": str(Path(__file__).parents[1])},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "os": {"platform": platform.platform(), "machine": platform.machine()},
        "cpu": {"model": cpu_model(), "count": os.cpu_count(), "available": cpu_count(), "flags": cpu_flags()},
        "onnxruntime": onnxruntime_info(),
        "packages": package_versions(),
        "env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("MMSRAREC_", "OMP_", "CUDA_VISIBLE"))},
    }


def env(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text.")):
    """Print what a bug report needs: versions, onnxruntime providers, CPU count and SIMD flags, Python and OS."""
    info = environment()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    ort, cpu = info["onnxruntime"], info["cpu"]
    lines = [
        f"mmsrarec-edge {info['mmsrarec_edge']['version']} ({info['mmsrarec_edge']['path']})",
        f"python        {info['python']['version']} ({info['python']['implementation']}, "
        f"{info['python']['executable']})",
        f"os            {info['os']['platform']}",
        f"cpu           {cpu['model']}; {cpu['available']} of {cpu['count']} CPUs available; "
        f"flags: {' '.join(cpu['flags']) or 'none found'}",
        "onnxruntime   " + (f"{ort['version']} ({ort['device']}), providers: {', '.join(ort['providers'])}"
                            if ort["installed"] else "not installed"),
        "packages:",
        *(f"  {name:16} {v or '-'}" for name, v in info["packages"].items()),
    ]
    if info["env"]:
        lines += ["environment:", *(f"  {k}={v}" for k, v in info["env"].items())]
    typer.echo("\n".join(lines))


class Stage(str, Enum):
    sasrec = "sasrec"
    summarizer = "summarizer"
    recommender = "recommender"
    export = "export"
    profiles = "profiles"


def _defaults(stage: Stage):
    if stage is Stage.sasrec:
        from .train import default_sasrec

        return default_sasrec()
    if stage is Stage.summarizer:
        from .summarize import default_config

        return default_config()
    if stage is Stage.recommender:
        from .recommend_train import default_config

        return default_config()
    from .export import ExportOptions

    return ExportOptions()


def config(
    stage: Stage = typer.Argument(..., help="The stage whose settings to print; profiles: the packaged export "
                                            "profiles."),
    config_file: Path = typer.Option(None, "--config", help=CONFIG_HELP + " Shows the settings it gives."),
):
    """Print a stage's settings as TOML: the defaults, or with --config what that file gives (checked strictly).
    The output is a valid `--config` file for the stage's command."""
    from ..core.config import PROFILES_DIR, apply, profile_names, read_table, to_toml

    if stage is Stage.profiles:
        from ..core.config import read_toml

        for name in profile_names():
            desc = read_toml(PROFILES_DIR / f"{name}.toml").get("description", "")
            typer.echo(f"{name:16} {desc}")
        return
    cfg = apply(_defaults(stage), read_table(config_file, stage.value), config_file or "defaults")
    typer.echo(to_toml(cfg), nl=False)


def register(apps) -> None:
    apps["app"].command("config", rich_help_panel=TOOLS)(config)
    apps["app"].command("env", rich_help_panel=TOOLS)(env)

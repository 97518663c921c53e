"""CLI conventions every command follows: help on every option and the choices listed, commands in pipeline order,
`--version`, `env`, `config`, results on stdout and status on stderr, renamed options' deprecated aliases."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from mmsrarec_edge.cli import app

CLI = [sys.executable, "-m", "mmsrarec_edge.cli"]
WIDE = {"COLUMNS": "250", "NO_COLOR": "1"}


def commands(group=None, path=()):
    group = group or get_command(app)
    for name in group.list_commands(None):
        cmd = group.commands[name]
        if hasattr(cmd, "commands"):
            yield from commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def help_text(*args: str) -> str:
    r = CliRunner().invoke(app, [*args, "--help"], env=WIDE)
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())  # rich wraps: compare on single spaces


def run(*args, env=None, ok=True):
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **(env or {})})
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def test_every_option_and_argument_has_help():
    missing = [f"{' '.join(path)} {p.name}" for path, cmd in commands() for p in cmd.params
               if not getattr(p, "hidden", False) and not (getattr(p, "help", None) or "").strip()]
    assert missing == []


@pytest.mark.parametrize("path", [path for path, _ in commands()], ids=" ".join)
def test_help_renders_with_defaults_filled_in(path):
    text = help_text(*path)
    assert not re.search(r"\s@[a-z_]", text), text  # every "@setting" marker became "(setting; default ...)"


def test_config_settings_show_their_defaults_in_help():
    text = help_text("train", "recommender")
    assert "(train.epochs; default 2)" in text and "(train.lr; default 0.003)" in text
    assert "(prompt.rank_hint; default true)" in text and "--neighbours" in text and "--k " not in text
    assert "(n_rescore; default 50)" in text


@pytest.mark.parametrize("path, option, choices", [
    (("recommend",), "--provider", "auto|cpu|cuda|tensorrt"),
    (("recommend",), "--precision", "fp32|fp16|int8"),
    (("summarize-item",), "--provider", "auto|cpu|cuda|tensorrt"),
    (("serve",), "--precision", "fp32|fp16|int8"),
    (("summarize-catalog",), "--precision", "fp32|fp16|int8"),
    (("triton-repo",), "--device", "gpu|cpu"),
    (("evaluate",), "--split", "test|val"),
    (("train", "summarizer"), "--targets", "auto|attributes|tfidf"),
    (("train", "summarizer"), "--reward-scale", "group|log_ppl|paper"),
    (("config",), "STAGE", "sasrec|summarizer|recommender|export|profiles"),
])
def test_choices_are_listed(path, option, choices):
    text = help_text(*path)
    assert choices in text.replace("│", "").replace(" ", ""), (option, text)


def test_commands_are_grouped_in_pipeline_order():
    text = help_text()
    panels = [m.group(1) for m in re.finditer(r"╭─ (\w+) ─", text)]
    assert panels == ["Options", "Data", "Train", "Evaluate", "Export", "Runtime", "Serving", "Tools"]
    listed = [m.group(1) for m in re.finditer(r"│ ([a-z][a-z-]*) ", text)]
    assert listed[:3] == ["data", "train", "summarize"] and listed[-3:] == ["demo", "config", "env"]
    assert listed.index("evaluate") < listed.index("export") < listed.index("recommend") < listed.index("serve")


def test_renamed_options_keep_hidden_aliases():
    for path, new, old in ((("data", "protocol"), "--history-len", "--history"),
                           (("data", "protocol"), "--negatives-per-case", "--negatives"),
                           (("train", "recommender"), "--neighbours", "--k"),
                           (("train", "recommender"), "--negatives-per-window", "--negatives"),
                           (("train", "summarizer"), "--info-weight", "--a"),
                           (("train", "summarizer"), "--recon-weight", "--b"),
                           (("train", "summarizer"), "--len-weight", "--c"),
                           (("bench",), "--candidate-counts", "--candidates"),
                           (("bench",), "--history-lens", "--histories")):
        text = help_text(*path)
        assert new in text and f"{old} " not in text, (path, old)
        cmd = dict(commands())[path]
        assert any(old in p.opts and p.hidden for p in cmd.params), (path, old)


def test_an_alias_and_its_new_name_together_are_a_usage_error(tmp_path):
    r = run("train", "summarizer", tmp_path, "--out", tmp_path / "o", "--a", 1, "--info-weight", 2, ok=False)
    assert r.returncode == 2 and "--a is the old name of --info-weight" in r.stderr and "Traceback" not in r.stderr


def test_version_and_env_do_not_import_torch():
    code = ("import sys\nfrom mmsrarec_edge import cli\nsys.argv = ['mmsrarec-edge', *sys.argv[1:]]\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and re.fullmatch(r"mmsrarec-edge \d+\.\d+\.\d+\S*\n", r.stdout), r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-c", code, "env", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["packages"]["numpy"] and "torch" in info["packages"] and info["python"]["version"]
    assert info["cpu"]["available"] >= 1 and isinstance(info["cpu"]["flags"], list)
    assert "CPUExecutionProvider" in info["onnxruntime"]["providers"]


def test_env_reads_cpu_flags(tmp_path):
    from mmsrarec_edge.commands.env import cpu_flags

    (tmp_path / "cpuinfo").write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_vnni\n\nflags : avx\n")
    assert cpu_flags(tmp_path / "cpuinfo") == ["avx2", "avx512f", "avx512_vnni"]
    assert cpu_flags(tmp_path / "none") == []


def test_config_prints_a_loadable_file(tmp_path):
    r = run("config", "recommender")
    (tmp_path / "rec.toml").write_text(r.stdout)
    from mmsrarec_edge.commands.recommend_train import build_config
    from mmsrarec_edge.recommend.pipeline import RecommenderConfig

    assert build_config(tmp_path / "rec.toml") == RecommenderConfig()
    (tmp_path / "bad.toml").write_text("[train]\nepoch = 3\n")
    r = run("config", "recommender", "--config", tmp_path / "bad.toml", ok=False)
    assert r.returncode == 2 and "bad.toml: unknown key 'train.epoch'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "cpu-int8" in run("config", "profiles").stdout


def test_results_on_stdout_status_and_progress_on_stderr(tmp_path):
    """With the progress bars on, stdout still parses as the result (JSON), and a renamed option still works with a
    deprecation note on stderr."""
    loud = {"MMSRAREC_QUIET": "0"}
    r = run("data", "synth", "--out", tmp_path / "d", "--items", 60, "--users", 60, env=loud)
    assert json.loads(r.stdout)["items"] == 60 and f"wrote {tmp_path / 'd'}" in r.stderr
    r = run("data", "protocol", tmp_path / "d", "--out", tmp_path / "p", "--history", 3, "--negatives", 5,
            "--max-cases-per-user", 2, env=loud)
    assert json.loads(r.stdout)["history_len"] == 3
    assert "--history is deprecated" in r.stderr and "use --history-len" in r.stderr
    assert "--negatives is deprecated" in r.stderr
    from mmsrarec_edge.data.protocol import load_protocol

    assert load_protocol(tmp_path / "p").test.candidates.shape[1] == 6

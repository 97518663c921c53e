"""One source of defaults per stage: the config dataclasses, the strict TOML loader (core/config.py), the commands'
`build_config` (what a `train` command or `export` runs with, obtained without running it), packaged export profiles
by name, the protocol's history length in the prompt, and the thread cap."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mmsrarec_edge.core import config as C
from mmsrarec_edge.core.errors import UserError
from mmsrarec_edge.core.prompt import STORED_DEFAULTS, PromptConfig

ROOT = Path(__file__).resolve().parents[1]
tomllib = C._tomllib()  # tomli on Python 3.10


@dataclasses.dataclass
class Inner:
    steps: int = 3
    lr: float = 1e-3
    names: tuple[str, ...] = ("a", "b")


@dataclasses.dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    extra: dict = dataclasses.field(default_factory=lambda: {"k": 1})
    inner: Inner = dataclasses.field(default_factory=Inner)


def write(tmp_path, text: str, name: str = "c.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- the loader


def test_loader_reads_nested_tables_and_converts_types(tmp_path):
    p = write(tmp_path, 'name = "y"\nflag = true\n[inner]\nsteps = 5\nlr = 1\nnames = ["c"]\n[extra]\nj = 2\n')
    cfg = C.build(Outer(), p, "recommender")
    assert cfg == Outer("y", True, {"k": 1, "j": 2}, Inner(5, 1.0, ("c",)))
    assert isinstance(cfg.inner.lr, float) and isinstance(cfg.inner.names, tuple)


@pytest.mark.parametrize("text, needle", [
    ("nmae = 'y'\n", "c.toml: unknown key 'nmae'"),
    ("[inner]\nstep = 5\n", "c.toml: unknown key 'inner.step'"),
    ("[inner]\nsteps = 2.5\n", "c.toml: inner.steps must be an integer, got 2.5"),
    ("[inner]\nsteps = true\n", "c.toml: inner.steps must be an integer, got True"),
    ("flag = 'yes'\n", "c.toml: flag must be true or false"),
    ("inner = 3\n", "c.toml: inner must be a table"),
    ("[inner]\nnames = [1]\n", "inner.names must be a list of strings"),
    ("name = [\n", "c.toml: not valid TOML"),
    ("[sasrec]\nx = 1\n[oops]\ny = 2\n", "unknown key 'oops' beside the stage tables"),
])
def test_loader_errors_name_the_file_and_the_key(tmp_path, text, needle):
    with pytest.raises(UserError) as e:
        C.build(Outer(), write(tmp_path, text), "recommender")
    assert needle in str(e.value) and "\n" not in e.value.message


def test_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        C.read_toml(tmp_path / "none.toml")


def test_pipeline_file_gives_each_stage_its_table(tmp_path):
    p = write(tmp_path, '[recommender]\nname = "r"\n[recommender.inner]\nsteps = 9\n[summarizer]\nanything = 1\n')
    assert C.build(Outer(), p, "recommender") == Outer(name="r", inner=Inner(steps=9))
    assert C.build(Outer(), p, "export") == Outer()  # no [export] table: the defaults


def test_command_line_wins_over_the_file_and_none_means_not_given(tmp_path):
    p = write(tmp_path, '[inner]\nsteps = 5\nlr = 0.5\n')
    cfg = C.build(Outer(), p, "x", {"inner.steps": 7, "inner.lr": None, "name": None})
    assert cfg.inner == Inner(7, 0.5) and cfg.name == "x"


@pytest.mark.parametrize("stage", ["sasrec", "summarizer", "recommender", "export"])
def test_to_toml_round_trips_every_stage(stage):
    from mmsrarec_edge.commands.env import Stage, _defaults

    default = _defaults(Stage(stage))
    text = C.to_toml(default)
    assert C.apply(_defaults(Stage(stage)), tomllib.loads(text), "printed") == default


# ---------------------------------------------------------------- the commands build the dataclasses' defaults


def test_recommender_config_is_what_the_cli_trains_with_no_options():
    from mmsrarec_edge.commands.recommend_train import build_config
    from mmsrarec_edge.core.retrieval import RetrievalConfig
    from mmsrarec_edge.recommend.pipeline import RecommenderConfig
    from mmsrarec_edge.recommend.tasks import TaskConfig
    from mmsrarec_edge.recommend.train import TrainConfig

    assert build_config() == RecommenderConfig()
    # ... and both are what `train recommender` built explicitly before its defaults moved into the dataclasses
    before = RecommenderConfig(
        retrieval_enabled=True, items_per_neighbour=0, init="minilm", freeze_embeddings=True, crossfit_folds=0,
        sasrec_folds="", mllm={"hidden_size": 128, "num_layers": 2, "intermediate_size": 256, "seed": 0},
        prompt=PromptConfig(rank_hint=True, rank_digits=2, collab_item_keywords=6, candidate_image=False),
        retrieval=RetrievalConfig(k=3, seed=0), tasks=TaskConfig(windows_per_user=8, negatives=3, aux=True, seed=0),
        train=TrainConfig(epochs=2, batch_size=32, lr=3e-3, val_cases=300, lora_r=0, max_steps=0, threads=1, seed=0))
    assert RecommenderConfig() == before


def test_recommender_options_map_onto_the_config(tmp_path):
    from mmsrarec_edge.commands.recommend_train import build_config

    p = write(tmp_path, "[train]\nepochs = 5\nseed = 4\n[prompt]\nrank_hint = false\n")
    cfg = build_config(p, epochs=1, seed=7, hidden=64, init="scratch", neighbours=5, negatives_per_window=4,
                       rescore=20)
    assert cfg.train.epochs == 1 and cfg.prompt.rank_hint is False  # option over file, file over default
    assert (cfg.train.seed, cfg.tasks.seed, cfg.retrieval.seed, cfg.mllm["seed"]) == (7, 7, 7, 7)
    assert cfg.mllm["hidden_size"] == 64 and cfg.mllm["intermediate_size"] == 128 and cfg.init == ""
    assert cfg.retrieval.k == 5 and cfg.tasks.negatives == 4 and cfg.n_rescore == 20
    with pytest.raises(UserError, match="n_rescore"):
        build_config(rescore=0)


def test_sasrec_summarizer_and_export_defaults_are_the_dataclasses():
    from mmsrarec_edge.commands.export import ExportOptions, build_options
    from mmsrarec_edge.commands.summarize import build_config as summarizer_config
    from mmsrarec_edge.commands.train import build_config as sasrec_config
    from mmsrarec_edge.models.sasrec import SASRecConfig
    from mmsrarec_edge.models.sasrec_train import SASRecTrainConfig
    from mmsrarec_edge.summarize.config import SummarizerConfig

    run = sasrec_config()
    assert run.model == SASRecConfig() and run.train == SASRecTrainConfig()
    assert sasrec_config(seed=3, epochs=4).train == dataclasses.replace(SASRecTrainConfig(), seed=3, epochs=4)
    assert summarizer_config() == SummarizerConfig()
    assert summarizer_config(a=2.0, targets=None).a == 2.0
    assert build_options() == ExportOptions()
    assert build_options(profile="cpu-int8", out=Path("b"), threads=None) == ExportOptions(profile="cpu-int8", out="b")


def test_summarizer_config_file_is_strict(tmp_path):
    from mmsrarec_edge.commands.summarize import build_config

    assert build_config(write(tmp_path, "[summarizer]\ngrpo_steps = 3\n")).grpo_steps == 3
    with pytest.raises(UserError, match="unknown key 'grpo_step'"):
        build_config(write(tmp_path, "grpo_step = 3\n"))
    with pytest.raises(UserError, match="num_generations must be at least 2"):  # the dataclass's own checks run
        build_config(write(tmp_path, "num_generations = 1\n"))


def test_stored_prompt_configs_read_as_written():
    """A stored prompt config lacking a setting whose default changed reads with the value it meant then."""
    assert PromptConfig.from_dict(PromptConfig().to_dict()) == PromptConfig()
    old = PromptConfig.from_dict({"history_len": 5, "candidate_image": True})
    assert (old.rank_hint, old.rank_digits, old.collab_item_keywords) == (False, 1, 4)
    assert set(STORED_DEFAULTS) <= {f.name for f in dataclasses.fields(PromptConfig)}


def test_the_prompt_history_length_is_the_protocols(tiny_protocol, tmp_path):
    from mmsrarec_edge.commands.recommend_train import build_config, use_protocol_history
    from mmsrarec_edge.data.protocol import save_protocol

    save_protocol(tiny_protocol, tmp_path / "p")
    n = tiny_protocol.config.history_len
    cfg = build_config()
    cfg.prompt.history_len = n + 2
    use_protocol_history(cfg, None, tmp_path / "p")
    assert cfg.prompt.history_len == n
    bad = write(tmp_path, f"[prompt]\nhistory_len = {n + 1}\n")
    with pytest.raises(UserError) as e:
        use_protocol_history(build_config(bad), bad, tmp_path / "p")
    assert f"prompt.history_len = {n + 1}" in e.value.message and "--history-len" in e.value.hint


# ---------------------------------------------------------------- export profiles, threads


def test_profiles_are_package_data_found_by_name(tmp_path):
    assert set(C.profile_names()) == {"cpu-fp32", "cpu-int8", "cpu-int4", "cpu-fp32-int8", "cuda-fp16", "tensorrt-fp16",
                                      "jetson-orin"}
    assert C.profile_path("cpu-int8") == C.PROFILES_DIR / "cpu-int8.toml"
    own = write(tmp_path, 'name = "mine"\n', "mine.toml")
    assert C.profile_path(own) == own and C.profile_path(str(own)) == own
    with pytest.raises(UserError, match="unknown export profile 'cpu-int9'") as e:
        C.profile_path("cpu-int9")
    assert "cpu-int8" in e.value.hint
    with pytest.raises(UserError, match="not found"):
        C.profile_path(tmp_path / "none.toml")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "profiles/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["mmsrarec_edge"]
    assert not (ROOT / "export").exists() or not list((ROOT / "export").glob("*.toml"))  # one copy of each profile


def test_threads_are_capped_at_the_cpu_count():
    n = C.cpu_count()
    assert C.cap_threads(None) == (None, None) and C.cap_threads(n) == (n, None)
    capped, message = C.cap_threads(n + 1000)
    assert capped == n and f"--threads {n + 1000}" in message and str(n) in message

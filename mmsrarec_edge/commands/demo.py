"""`mmsrarec-edge demo`: the whole chain on the embedded default, end to end, in one command.

Each step writes into OUT/<step>; a step whose output already exists is reused unless --fresh is given.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("work/demo"), "--out", "-o", help="Working directory for every step's output."),
    fresh: bool = typer.Option(False, help="Recompute every step even if its output exists."),
    seed: int = typer.Option(0, help="Seed of the synthetic catalog."),
):
    """Run the end-to-end demo on the synthetic catalog: data -> protocol -> SASRec -> evaluate."""
    from ..data.protocol import ProtocolConfig, build_protocol, load_protocol, save_protocol
    from ..data.schema import load_dataset
    from ..data.synth import SynthConfig, generate
    from ..evaluate import run_evaluation, write_report
    from ..io_utils import atomic_dir, ensure_writable_dir, write_json
    from ..models.popularity import Popularity
    from ..models.sasrec import SASRecModel
    from ..models.sasrec_train import SASRecTrainConfig, train_sasrec
    from ..progress import progress_bar

    ensure_writable_dir(out)
    timings = {}

    def step(name: str, path: Path, fn):
        t = time.perf_counter()
        if fresh or not path.exists():
            typer.echo(f"[demo] {name} -> {path}")
            fn()
        else:
            typer.echo(f"[demo] {name}: reusing {path}")
        timings[name] = round(time.perf_counter() - t, 2)

    data_dir, proto_dir, sas_dir, rep_dir = out / "data", out / "protocol", out / "sasrec", out / "report"

    def make_data():
        with atomic_dir(data_dir) as tmp, progress_bar("drawing items", SynthConfig().n_items) as adv:
            generate(SynthConfig(seed=seed), tmp, progress=adv)

    step("data synth", data_dir, make_data)
    step("protocol", proto_dir, lambda: save_protocol(build_protocol(load_dataset(data_dir), ProtocolConfig()), proto_dir))
    protocol = load_protocol(proto_dir)

    def make_sasrec():
        tcfg = SASRecTrainConfig()
        with progress_bar("training SASRec (epochs)", tcfg.epochs) as adv:
            model, log = train_sasrec(protocol, tcfg=tcfg, progress=adv)
        with atomic_dir(sas_dir) as tmp:
            model.save(tmp)
            write_json(tmp / "train_log.json", log)

    step("train sasrec", sas_dir, make_sasrec)

    def make_report():
        sas = SASRecModel.load(sas_dir)
        pop = Popularity(protocol.train_sequences())
        report = run_evaluation(protocol, {"popularity": lambda c: pop.score(None, c.candidates),
                                           "SASRec": lambda c: sas.score(c.prefixes, c.candidates)})
        write_report(report, rep_dir, title="Demo: synthetic catalog")

    step("evaluate", rep_dir, make_report)
    write_json(out / "timings.json", timings)
    typer.echo((rep_dir / "report.md").read_text())
    typer.echo(json.dumps({"timings_s": timings}))


def register(apps) -> None:
    apps["app"].command("demo")(demo)

"""The Ray path of catalog summarization: the pending parts as a Ray Dataset, `map_batches` over an actor pool where
each actor opens the bundle's summarizer once (ONNX Runtime sessions, one intra-op thread) and summarizes one part
per call; the driver writes each part's file as its result streams back, so an interrupted run keeps every part that
came back. `address`: "local" starts a private local cluster with `workers` CPUs; anything else is passed to
`ray.init(address=...)` ("auto", "ray://host:10001", ...).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..core.errors import UserError
from .catalog_summarize import CatalogJob, JobResult, finish, prepare, summarize_part, write_part


class PartSummarizer:
    """A Ray Data actor: one summarizer per actor, reused for every part it is given."""

    def __init__(self, bundle: str, threads: int | None, provider: str | None, precision: str | None):
        from .catalog_summarize import open_summarizer

        # the driver verified the bundle's hashes; actors only check sizes and types
        self.summarizer = open_summarizer(Path(bundle), threads, provider, precision, verify=False)

    def __call__(self, batch: dict) -> dict:
        out = {"part": [], "rows": [], "seconds": [], "error": []}
        for part, rows in zip(batch["part"], batch["rows"]):
            t = time.perf_counter()
            try:
                kws = summarize_part(self.summarizer, json.loads(rows))
                out["rows"].append(json.dumps([[k.item_id, k.image_keywords, k.text_keywords, k.has_image]
                                               for k in kws]))
                out["error"].append("")
            except UserError as exc:  # a bad item (image missing): Ray would drop the exception's type and text
                out["rows"].append("")
                out["error"].append(json.dumps([exc.message, exc.hint]))
            out["part"].append(int(part))
            out["seconds"].append(time.perf_counter() - t)
        return out


def _init_ray(address: str, workers: int):
    try:
        import ray
    except ImportError as exc:
        raise UserError("Ray is not installed", "pip install 'mmsrarec-edge[scale]'") from exc
    if ray.is_initialized():
        return ray, False
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    kw = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address == "local":
        ray.init(num_cpus=workers, **kw)
    else:
        ray.init(address=address, **kw)
    return ray, True


def run_ray(job: CatalogJob, address: str = "local", workers: int = 2, progress=None) -> JobResult:
    from ..core.keyword_store import ItemKeywords

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    parts, pending = prepare(job)
    times, startup = [], 0.0
    if pending:
        t = time.perf_counter()
        ray, started = _init_ray(address, workers)
        startup = time.perf_counter() - t
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.execution_options.preserve_order = False  # parts are written by index, in any order
            ds = ray.data.from_items([{"part": i, "rows": json.dumps(parts[i])} for i in pending],
                                     override_num_blocks=len(pending))
            results = ds.map_batches(PartSummarizer, batch_size=1, num_cpus=1,
                                     compute=ray.data.ActorPoolStrategy(size=workers),
                                     fn_constructor_kwargs={"bundle": str(Path(job.bundle).resolve()),
                                                            "threads": job.threads, "provider": job.provider,
                                                            "precision": job.precision})
            for row in results.iter_rows():
                if row["error"]:
                    raise UserError(*json.loads(row["error"]))
                kws = [ItemKeywords(int(i), list(img), list(txt), bool(has)) for i, img, txt, has in
                       json.loads(row["rows"])]
                write_part(Path(job.out), int(row["part"]), kws)
                times.append(float(row["seconds"]))
                if progress:
                    progress(len(kws))
        finally:
            if started:
                ray.shutdown()
    store = finish(job, parts)
    return JobResult(store, sum(len(parts[i]) for i in pending), len(parts), len(pending),
                     time.perf_counter() - t0, workers, "ray", times, startup)

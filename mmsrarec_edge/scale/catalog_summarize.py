"""Offline catalog summarization with the EXPORTED summarizer (runtime/summarizer.py: numpy greedy decoding over
ONNX Runtime, torch-free), in one process or on a Ray cluster (Ray Data over an actor pool, one summarizer per actor).

Input: an item table (Parquet with item_id, title, optional description and image; image paths relative to the
table's folder, as in a canonical dataset's items.parquet). Output, a store directory:

  STORE/job.json                 what is being summarized: the bundle's summarizer files (SHA-256), the table's
                                 SHA-256, the part size; a rerun with other inputs is refused
  STORE/parts/part-NNNNN.parquet the keyword store rows of part N (items in item-id order, `part_size` per part),
                                 each written atomically when its part is done
  STORE/keywords.parquet         the merged keyword store (summarize/store.py format), written when all parts exist

An interrupted run leaves finished parts; the next run with the same inputs summarizes only the missing parts. Both
paths call `summarize_part` on the same parts, so the Ray store equals the single-process one item for item. Ray
workers must see the bundle and the images at the same paths (a shared file system on a multi-node cluster).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from ..core.errors import DataError, UserError
from ..core.io_utils import ensure_writable_dir, sha256_file, write_json
from ..core.keyword_store import ItemKeywords, read_keyword_store, write_keyword_store

JOB = "job.json"
STORE = "keywords.parquet"


@dataclass
class CatalogJob:
    bundle: Path
    items: Path
    out: Path
    part_size: int = 32
    threads: int | None = 1  # onnxruntime intra-op threads per summarizer (one per worker)
    provider: str | None = None
    precision: str | None = None


@dataclass
class JobResult:
    store: Path
    items: int
    parts: int
    computed_parts: int
    seconds: float
    workers: int
    mode: str
    part_seconds: list[float] = field(default_factory=list)
    startup_seconds: float = 0.0  # Ray: connecting to / starting the cluster

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"store": str(self.store), "items": self.items, "parts": self.parts,
                "computed_parts": self.computed_parts, "seconds": round(self.seconds, 3), "workers": self.workers,
                "mode": self.mode, "startup_seconds": round(self.startup_seconds, 3),
                "worker_seconds": round(sum(self.part_seconds), 3)}


def read_item_rows(path: Path) -> list[dict]:
    """[{item_id, text, image}] in item-id order; text = title + ". " + description (schema.Item.text); image an
    absolute path or None."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"item table {path} not found", "pass an items.parquet (e.g. a dataset's)")
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:
        raise DataError(path, f"not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    if rows and ("item_id" not in rows[0] or "title" not in rows[0]):
        raise DataError(path, "an item table needs item_id and title columns")
    out, seen = [], set()
    for i, r in enumerate(rows):
        iid = r["item_id"]
        if iid is None or iid in seen:
            raise DataError(path, f"item_id {iid!r} is missing or repeated", row=i)
        seen.add(iid)
        title, desc = str(r.get("title") or ""), str(r.get("description") or "")
        text = f"{title}. {desc}".strip() if desc else title
        img = r.get("image")
        out.append({"item_id": int(iid), "text": text, "image": str((path.parent / img).resolve()) if img else None})
    return sorted(out, key=lambda r: r["item_id"])


def plan_parts(rows: list[dict], part_size: int) -> list[list[dict]]:
    if part_size < 1:
        raise UserError(f"--part-size must be >= 1, got {part_size}")
    return [rows[i:i + part_size] for i in range(0, len(rows), part_size)]


def part_path(out: Path, index: int) -> Path:
    return Path(out) / "parts" / f"part-{index:05d}.parquet"


def open_summarizer(bundle: Path, threads: int | None = 1, provider: str | None = None,
                    precision: str | None = None, verify: bool = True):
    from ..core.bundle import load_manifest
    from ..runtime.sessions import SessionConfig
    from ..runtime.summarizer import load_item_summarizer

    return load_item_summarizer(load_manifest(Path(bundle), verify=verify),
                                SessionConfig.resolve(provider, precision, threads))


def summarize_part(summarizer, rows: list[dict]) -> list[ItemKeywords]:
    out = []
    for r in rows:
        s = summarizer.summarize(r["image"], r["text"])
        out.append(ItemKeywords(r["item_id"], s.image_keywords, s.text_keywords, r["image"] is not None))
    return out


def _fingerprint(job: CatalogJob) -> dict:
    from ..core.bundle import load_manifest

    man = load_manifest(Path(job.bundle), verify=False)
    files = {rel: meta["sha256"] for rel, meta in sorted(man.files.items())
             if rel.startswith("summarizer/") or rel in ("tokenizer.json", "config.json")}
    return {"format": "mmsrarec-catalog-job", "version": 1, "bundle_files": files,
            "items_sha256": sha256_file(Path(job.items)), "part_size": job.part_size,
            "precision": job.precision}


def prepare(job: CatalogJob) -> tuple[list[list[dict]], list[int]]:
    """(all parts, indices of the parts still to do); writes or checks STORE/job.json."""
    rows = read_item_rows(job.items)
    parts = plan_parts(rows, job.part_size)
    out = ensure_writable_dir(Path(job.out))
    fp = _fingerprint(job)
    if (out / JOB).is_file():
        old = json.loads((out / JOB).read_text(encoding="utf-8"))
        if old != fp:
            changed = [k for k in fp if old.get(k) != fp[k]]
            raise UserError(f"{out} holds a run with other inputs (differs in: {', '.join(changed)})",
                            "use a new --out folder, or delete this one to start over")
    elif any(out.iterdir()):
        raise UserError(f"output {out} is not empty and is not a catalog summarization store",
                        "choose a new or empty directory")
    else:
        write_json(out / JOB, fp)
    ensure_writable_dir(out / "parts")
    pending = [i for i, p in enumerate(parts) if not _part_done(out, i, p)]
    return parts, pending


def _part_done(out: Path, index: int, rows: list[dict]) -> bool:
    path = part_path(out, index)
    if not path.is_file():
        return False
    try:
        return sorted(read_keyword_store(path)) == [r["item_id"] for r in rows]
    except DataError:
        return False  # unreadable (cannot happen with atomic writes, but a copied folder may hold one): redo it


def write_part(out: Path, index: int, rows: list[ItemKeywords]) -> None:
    write_keyword_store(part_path(out, index), rows, {"part": index})


def finish(job: CatalogJob, parts: list[list[dict]]) -> Path:
    out = Path(job.out)
    merged = []
    for i in range(len(parts)):
        merged.extend(read_keyword_store(part_path(out, i)).values())
    return write_keyword_store(out / STORE, merged, {"source": "summarize-catalog", "bundle": str(job.bundle)})


def run_local(job: CatalogJob, progress=None) -> JobResult:
    """The single-process path (the reference the Ray path is compared with)."""
    t0 = time.perf_counter()
    parts, pending = prepare(job)
    summarizer = open_summarizer(job.bundle, job.threads, job.provider, job.precision) if pending else None
    times = []
    for i in pending:
        t = time.perf_counter()
        write_part(Path(job.out), i, summarize_part(summarizer, parts[i]))
        times.append(time.perf_counter() - t)
        if progress:
            progress(len(parts[i]))
    store = finish(job, parts)
    return JobResult(store, sum(len(parts[i]) for i in pending), len(parts), len(pending),
                     time.perf_counter() - t0, 1, "local", times)

"""Output targets: what each command writes, and the one check every writing command runs BEFORE any work.

A command replaces (or writes into) its `--out` directory only when it is absent, empty, or carries the marker file
of the command's own kind of output (a dataset's dataset.json, a bundle's manifest.json, ...): a mistyped `--out`
never wipes or litters an unrelated folder, and the refusal comes before minutes of training, not after. A file
output (a keyword store) replaces only a file of its own kind. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import UserError
from .io_utils import check_output_dir, ensure_writable_dir

__all__ = ["check_output_dir", "check_output_file", "check_keyword_store_output", "is_keyword_store"]

# The marker file of each kind of output directory (written last, or with the rest, by its command).
DATASET = "dataset.json"  # data synth, data import
PROTOCOL = "protocol.json"  # data protocol
SASREC = "model.safetensors"  # train sasrec
SUMMARIZER = "train_log.json"  # train summarizer
RECOMMENDER = "recommender.json"  # train recommender
BUNDLE = "manifest.json"  # export
REPORT = "report.json"  # evaluate, bench
TRITON_REPO = "mmsrarec_repo.json"  # triton-repo
CATALOG_STORE = "job.json"  # summarize-catalog (resumable: rerun on its own store)


def check_output_file(target: Path, is_own: Callable[[Path], bool], what: str, hint: str) -> Path:
    """Before any work: a UserError unless `target` is absent or a file `is_own` recognizes as `what` (the kind
    of file the command writes); a directory there is refused too. Its parent must be writable."""
    target = Path(target)
    if target.is_dir():
        raise UserError(f"output {target} is a directory", f"pass a file path for the {what}")
    if target.is_symlink() or (target.exists() and not is_own(target)):
        raise UserError(f"output {target} exists and is not a {what}; refusing to replace it", hint)
    ensure_writable_dir(target.parent)
    return target


def is_keyword_store(path: Path) -> bool:
    """Whether `path` is a keyword store (Parquet with the store's metadata); reads only the schema."""
    from .keyword_store import read_store_meta

    try:
        read_store_meta(path)
    except (UserError, ValueError, OSError):
        return False
    return True


def check_keyword_store_output(target: Path) -> Path:
    return check_output_file(target, is_keyword_store, "keyword store",
                             "choose a new file name (e.g. keywords.parquet): only a keyword store is replaced")

"""Atomic file and directory writes: outputs go to a temporary path in the same folder, then are renamed.

An interrupted command therefore never leaves a half-written file or bundle behind. The writes are also durable:
before a rename the new file (or every file and folder of a new directory) is fsync'ed, and after it the parent
directory, so a power loss or kernel crash right after a command returns cannot bring back the old output or leave an
empty file under the new name (on file systems that honour fsync). Torch-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` (and its parents) if needed; a UserError naming the problem when it cannot be written.
    Permission bits alone do not tell (root ignores them; /proc or a read-only mount refuse anyway), so a probe file
    is created and removed."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"cannot create output directory {path}: {blocker} is a file, not a directory",
                        "choose another location")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory {path}: {exc.strerror}", "choose a writable location") from exc
    if not os.access(path, os.W_OK):
        raise UserError(f"cannot write to {path}: permission denied",
                        "choose a writable location or fix its permissions")
    fd, probe = _temp_in(path, lambda: tempfile.mkstemp(prefix=".write-test.", dir=path))
    os.close(fd)
    os.unlink(probe)
    return path


def _temp_in(parent: Path, make):
    """mkstemp/mkdtemp in `parent`, with a failure (read-only or pseudo file system, no space) as a UserError."""
    try:
        return make()
    except OSError as exc:
        raise UserError(f"cannot write to {parent}: {exc.strerror or exc}", "choose a writable location") from exc


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the renames and creations inside it durable). File
    systems that cannot fsync a directory (EINVAL, e.g. some network mounts) are skipped silently."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file of `root`, then every directory, deepest first (their entries point at synced files)."""
    root = Path(root)
    dirs = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                fsync_path(p)
        dirs.extend(Path(dirpath) / d for d in dirnames)
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        fsync_path(d)


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path next to `target`; on success it is fsync'ed and replaces `target` in one rename,
    then the parent directory is fsync'ed (module docstring)."""
    target = Path(target)
    ensure_writable_dir(target.parent)
    fd, tmp = _temp_in(target.parent, lambda: tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp",
                                                               dir=target.parent))
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_path(tmp_path)
        os.replace(tmp_path, target)
        fsync_path(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_replaceable(target: Path, marker: str | None = None) -> None:
    """UserError unless `target` is absent, or a directory that is empty or holds `marker` (see atomic_dir)."""
    target = Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UserError(f"output {target} exists and is not a directory", "choose a new or empty directory")
    if marker and target.is_dir() and not (target / marker).is_file() and any(target.iterdir()):
        raise UserError(f"output {target} exists, is not empty and has no {marker}; refusing to replace it",
                        "choose a new or empty directory")


def check_output_dir(target: Path, marker: str | None = None) -> Path:
    """Before any work: a UserError unless `target` is absent, an empty directory or one holding `marker`, and its
    parent can be written (what atomic_dir requires, checked early). Returns `target` as a Path."""
    target = Path(target)
    check_replaceable(target, marker)
    ensure_writable_dir(target.parent)
    return target


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported (then the caller renames
    the old directory aside first, leaving a moment without `target`)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def atomic_dir(target: Path, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; on success it replaces `target` (old one removed last).

    An existing `target` must be a directory; with `marker` (the file that identifies what the caller writes, e.g.
    manifest.json) it must also be empty or hold that file, so a mistyped --out never wipes an unrelated folder.
    Every file and folder of the new directory is fsync'ed before the rename, the parent directory after it."""
    target = check_output_dir(target, marker)
    tmp = Path(_temp_in(target.parent, lambda: tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)))
    try:
        yield tmp
        fsync_tree(tmp)
        if target.exists():
            if _exchange(tmp, target):  # one step: `target` is the old or the new directory at every instant
                fsync_path(target.parent)
                shutil.rmtree(tmp, ignore_errors=True)  # now the old one
                return
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            fsync_path(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
            fsync_path(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    with atomic_path(Path(path), ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_text(path: Path, text: str) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (no second copy of large files on the same file system), else copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Lay out, write the PNG atomically (a half-written plot never replaces a good one) and close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(Path(path), ".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")  # long axis labels are never cut off
    plt.close(fig)

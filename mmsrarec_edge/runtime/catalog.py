"""The bundle's item catalog at runtime, and adding a cold-start item to it without breaking the bundle's manifest.

Read: catalog/items.parquet (item_id, title, text/image/merged keywords, has_image, optional candidate_token_ids) and
the optional catalog/image_features.safetensors (item_ids [N], features [N, n_image_tokens, H]: the recommender's
projected image features, computed at export time). Both are read once when a Recommender opens the bundle.

Write (`add_item`, behind `summarize-item --add-to-catalog`): the new item's row -- keywords from the runtime
summarizer, token ids of its candidate part when the catalog stores them, image features from the bundle's
recommender.vision graph when the catalog caches them -- is added to items.parquet (and image_features.safetensors,
and the bundle's copy of the keyword store), config.json's counts are updated, and the manifest gets the new files'
SHA-256 and sizes. The whole bundle is swapped in one step: a sibling temporary directory receives hard links to
every unchanged file (a copy where links are not possible) plus the rewritten files and manifest, and replaces the
bundle by rename (io_utils.atomic_dir). A crash leaves the old bundle intact; the new one verifies
(`load_manifest(verify=True)`) before the call returns.

Concurrent writers serialize on an exclusive lock (fcntl.flock) on a file beside the bundle, `<parent>/.<name>.lock`
(a bundle holds only the files its manifest lists): each writer re-reads the catalog and keyword store under the lock,
so every added item ends up in both. A writer waits up to MMSRAREC_LOCK_TIMEOUT seconds (default 120), then fails
with a one-line error. Signed bundles: adding an item changes the manifest, so `add_item` needs the signing key
(`sign_key`) and re-signs; without it a signed bundle is refused (its signature would no longer match). Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Container, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.bundle import MANIFEST, Manifest, load_manifest, read_safetensors, write_safetensors
from ..core.errors import BundleError, UserError
from ..core.io_utils import atomic_dir, link_or_copy, sha256_file
from ..core.signing import SIGNATURE, key_id, read_signature, sign_manifest

ITEMS = "catalog/items.parquet"


@dataclass
class CatalogItem:
    item_id: int
    title: str = ""
    text_keywords: list[str] = field(default_factory=list)
    image_keywords: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    has_image: bool = False
    candidate_token_ids: list[int] | None = None

    def to_dict(self) -> dict:
        return {"item_id": self.item_id, "title": self.title, "keywords": self.keywords,
                "text_keywords": self.text_keywords, "image_keywords": self.image_keywords, "has_image": self.has_image}


class Catalog:
    """item id -> CatalogItem (in catalog order), plus cached image features by item id."""

    def __init__(self, items: dict[int, CatalogItem], features: dict[int, np.ndarray] | None = None):
        self.items = items
        self.ids = np.fromiter(items, np.int64, len(items))
        self.features = features or {}

    def __contains__(self, item_id) -> bool:
        return int(item_id) in self.items

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def load(cls, manifest: Manifest) -> "Catalog":
        section = manifest.config().get("catalog")
        if not section:
            raise BundleError(f"bundle {manifest.root} has no item catalog",
                              "export it with the dataset (`mmsrarec-edge export ... --dataset DIR`)")
        path = manifest.path(section.get("items", ITEMS))
        try:
            # ParquetFile, not read_table: read_table goes through pyarrow.dataset, which imports pandas (~0.5 s)
            rows = pq.ParquetFile(path).read().to_pylist()
        except Exception as exc:  # pyarrow raises ArrowInvalid & co. for damaged files
            raise BundleError(f"{path}: not a readable Parquet file ({exc})", "re-export the bundle") from exc
        items: dict[int, CatalogItem] = {}
        for r in rows:
            iid = int(r["item_id"])
            items[iid] = CatalogItem(iid, r.get("title") or "", list(r.get("text_keywords") or []),
                                     list(r.get("image_keywords") or []), list(r.get("keywords") or []),
                                     bool(r.get("has_image")),
                                     None if r.get("candidate_token_ids") is None else list(r["candidate_token_ids"]))
        features = {}
        if section.get("image_features"):
            st = read_safetensors(manifest.path(section["image_features"]))
            features = {int(i): f for i, f in zip(st["item_ids"], st["features"])}
        return cls(items, features)


LOCK_TIMEOUT_ENV = "MMSRAREC_LOCK_TIMEOUT"


def lock_path(bundle_dir: Path) -> Path:
    root = Path(bundle_dir)
    return root.parent / f".{root.name}.lock"


@contextlib.contextmanager
def bundle_lock(bundle_dir: Path, timeout: float | None = None) -> Iterator[Path]:
    """Hold the bundle's writer lock (module docstring); a UserError after `timeout` seconds."""
    import fcntl

    if timeout is None:
        try:
            timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, "120"))
        except ValueError:
            raise UserError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds") from None
    path = lock_path(bundle_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot create the lock file {path}: {exc.strerror}",
                        "the bundle's parent directory must be writable to add items") from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UserError(f"{Path(bundle_dir)}: another writer holds {path} (waited {timeout:g} s)",
                                    f"retry when it is done, or raise {LOCK_TIMEOUT_ENV}") from None
                time.sleep(0.05)
        yield path
    finally:
        os.close(fd)  # releases the lock


def rewrite_bundle(manifest: Manifest, writers: dict[str, Callable[[Path], None]], sign_key=None) -> Manifest:
    """Replace the files `writers` names (rel path -> function writing the new content to the path it is given) and
    swap the bundle atomically (module docstring); with `sign_key` (an Ed25519 private key) the new manifest is
    signed. Returns the re-verified manifest. Callers hold bundle_lock."""
    root = manifest.root
    data = json.loads(json.dumps(manifest.data))
    mode = root.stat().st_mode & 0o7777
    with atomic_dir(root) as tmp:
        os.chmod(tmp, mode)  # mkdtemp makes 0700; the bundle keeps its permissions
        for rel in data["files"]:
            if rel not in writers:
                link_or_copy(root / rel, tmp / rel)
        for rel, write in writers.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            write(tmp / rel)
            data["files"][rel] = {"sha256": sha256_file(tmp / rel), "bytes": (tmp / rel).stat().st_size}
        (tmp / MANIFEST).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        if sign_key is not None:
            sign_manifest(tmp, sign_key)
    return load_manifest(root, verify=True)


def check_can_resign(bundle_dir: Path, sign_key=None) -> None:
    """A signed bundle can only be changed with its signing key (module docstring): UserError otherwise."""
    record = read_signature(Path(bundle_dir))
    if record is None:
        return
    if sign_key is None:
        raise UserError(f"{Path(bundle_dir) / SIGNATURE}: the bundle is signed (key {record.get('key_id')}); changing "
                        "it would break its signature", "pass --sign-key KEY (the signer's key) to re-sign")
    if record.get("key_id") != key_id(sign_key.public_key()):
        raise UserError(f"{Path(bundle_dir) / SIGNATURE}: signed by key {record.get('key_id')}, --sign-key is key "
                        f"{key_id(sign_key.public_key())}", "re-sign with the key that signed the bundle")


def catalog_ids(bundle_dir: Path) -> set[int] | None:
    """The catalog's item ids, reading only that column after a size check (no hashing): lets the CLI report a wrong
    id before a big bundle is hashed. None when the bundle has no catalog (the full open names that problem)."""
    manifest = load_manifest(bundle_dir, verify=False)
    section = manifest.config().get("catalog") or {}
    if not section:
        return None
    path = manifest.path(section.get("items", ITEMS))
    try:
        return set(pq.ParquetFile(path).read(columns=["item_id"]).column("item_id").to_pylist())
    except Exception as exc:  # pyarrow raises ArrowInvalid & co. for damaged files
        raise BundleError(f"{path}: not a readable Parquet file ({exc})", "re-export the bundle") from exc


def check_new_item_id(bundle_dir: Path, item_id: int) -> None:
    """UserError when `item_id` is negative or already in the catalog, before hashing (add_item checks again under
    the lock)."""
    if int(item_id) < 0:
        raise UserError(f"item id must be >= 0, got {item_id}")
    ids = catalog_ids(bundle_dir)
    if ids is not None and int(item_id) in ids:
        raise UserError(f"item id {item_id} is already in the catalog", "choose a new --item-id")


def _known_users(manifest: Manifest) -> list[int]:
    """The user ids of the retrieval index's histories (what Recommender.known_users serves), that column only."""
    config = manifest.config()
    section = config.get("retrieval")
    if not section or not config.get("sasrec") or not manifest.has_graph("sasrec.user_encoder"):
        return []
    path = manifest.root / section.get("dir", "index") / "histories.parquet"
    if path.relative_to(manifest.root).as_posix() not in manifest.files:
        return []
    try:
        return sorted(int(u) for u in pq.ParquetFile(path).read(columns=["user_id"]).column("user_id").to_pylist())
    except Exception as exc:  # pyarrow raises ArrowInvalid & co. for damaged files
        raise BundleError(f"{path}: not a readable Parquet file ({exc})", "re-export the bundle") from exc


def unknown_user(user: int, known: Sequence[int]) -> UserError:
    """The error for a user id the bundle does not know; `known`: its users, sorted (a few are shown)."""
    n = len(known)
    return UserError(f"unknown user id {user}", f"the bundle knows {n} users" + (
        f" (e.g. {', '.join(map(str, known[:5]))}); or pass an ad-hoc history" if n
        else "; pass an ad-hoc history instead"))


def check_history_ids(history: Iterable[int], catalog: Container[int]) -> None:
    unknown = [i for i in history if int(i) not in catalog]
    if unknown:
        raise UserError(f"unknown item id {unknown[0]} in the history (not in the bundle's catalog)"
                        + (f"; {len(unknown) - 1} more unknown" if len(unknown) > 1 else ""))


def check_candidate_ids(candidates: Iterable[int], catalog: Container[int]) -> None:
    unknown = [i for i in candidates if int(i) not in catalog]
    if unknown:
        raise UserError(f"unknown candidate item id {unknown[0]} (not in the bundle's catalog)")


def check_request_ids(bundle_dir: Path, history=None, candidates=(), user: int | None = None) -> None:
    """An unknown user, history or candidate item id, worded as the recommender words it, before hashing."""
    if user is not None:
        known = _known_users(load_manifest(bundle_dir, verify=False))
        if int(user) not in set(known):
            raise unknown_user(user, known)
    ids = catalog_ids(bundle_dir)
    if ids is not None:
        check_history_ids(history or (), ids)
        check_candidate_ids(candidates or (), ids)


def add_item(bundle_dir: Path, item: CatalogItem, image_features: np.ndarray | None = None,
             sign_key=None) -> Manifest:
    """Add `item` to the bundle's catalog (module docstring). `image_features` [n_image_tokens, H] are stored when the
    catalog caches image features; an id already in the catalog is a UserError. Holds the bundle's writer lock."""
    with bundle_lock(bundle_dir):
        check_can_resign(bundle_dir, sign_key)
        return _add_item(bundle_dir, item, image_features, sign_key)


def _add_item(bundle_dir: Path, item: CatalogItem, image_features: np.ndarray | None, sign_key) -> Manifest:
    manifest = load_manifest(bundle_dir, verify=True)
    config = manifest.config()
    section = dict(config.get("catalog") or {})
    if not section:
        raise BundleError(f"bundle {manifest.root} has no item catalog to add to",
                          "export it with the dataset (`mmsrarec-edge export ... --dataset DIR`)")
    items_rel = section.get("items", ITEMS)
    table = pq.ParquetFile(manifest.path(items_rel)).read()
    if item.item_id in set(table.column("item_id").to_pylist()):
        raise UserError(f"item id {item.item_id} is already in the catalog", "choose a new --item-id")
    row = {"item_id": item.item_id, "title": item.title, "text_keywords": item.text_keywords,
           "image_keywords": item.image_keywords, "keywords": item.keywords, "has_image": item.has_image}
    if "candidate_token_ids" in table.column_names:
        if item.candidate_token_ids is None:
            raise ValueError("this catalog stores candidate token ids: the new item needs them")
        row["candidate_token_ids"] = item.candidate_token_ids
    new_table = pa.concat_tables([table, pa.Table.from_pylist([row], schema=table.schema)])
    section["count"] = new_table.num_rows
    new_config = {**config, "catalog": section}
    writers: dict[str, Callable[[Path], None]] = {items_rel: lambda p: pq.write_table(new_table, p)}
    kw_section = config.get("keywords")
    if kw_section and kw_section.get("file") in manifest.files:
        # The bundle's copy of the keyword store gets the item too, so catalog and store keep telling the same story.
        from ..core.keyword_store import ItemKeywords, read_keyword_store, read_store_meta, write_keyword_store

        store_path = manifest.path(kw_section["file"])
        rows = read_keyword_store(store_path)
        rows[item.item_id] = ItemKeywords(item.item_id, item.image_keywords, item.text_keywords, item.has_image)
        meta = {k: v for k, v in read_store_meta(store_path).items() if k not in ("format", "version")}
        writers[kw_section["file"]] = lambda p: write_keyword_store(p, rows.values(), meta)
        new_config["keywords"] = {**kw_section, "items": len(rows)}
    writers["config.json"] = lambda p: p.write_text(json.dumps(new_config, indent=2) + "\n", encoding="utf-8")
    if section.get("image_features") and image_features is not None:
        rel = section["image_features"]
        st = read_safetensors(manifest.path(rel))
        feats = np.asarray(image_features, st["features"].dtype)
        if feats.shape != st["features"].shape[1:]:
            raise ValueError(f"image features of shape {feats.shape}, the catalog caches {st['features'].shape[1:]}")
        ids = np.concatenate([st["item_ids"], np.asarray([item.item_id], st["item_ids"].dtype)])
        all_feats = np.concatenate([st["features"], feats[None]])
        writers[rel] = lambda p: write_safetensors(p, {"item_ids": ids, "features": all_feats},
                                                   {"source": "recommender vision tower + projector"})
    return rewrite_bundle(manifest, writers, sign_key)

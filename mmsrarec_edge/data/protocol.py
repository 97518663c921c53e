"""The paper's evaluation protocol, saved once so that every model is scored on identical cases and candidates.

1. k-core filter (users and items with at least k interactions, repeated until stable); chronological sequences.
2. Users split 8:1:1 by a seeded permutation into train / validation / test.
3. Evaluation cases are sliding windows over each validation/test user's sequence: the target is item t, the history
   is everything before it (models that read only n items take the last n; n=5 by default). Only targets with a full
   n-item history count. Each user contributes at most `max_cases_per_user` windows, the most recent ones: with one
   case per user, ~94 test users on MovieLens-100K would give confidence intervals of +-10 points on HR@5.
4. Candidates are the true next item plus `n_negatives` (20) items drawn uniformly from the items the user never
   interacted with (over the whole sequence), seeded per case. Column 0 is always the positive.

A protocol directory holds protocol.json (config, split, item universe) and cases_{val,test}.parquet.

A protocol that cannot be built says why, naming the cause it finds in the data (`empty_hint`): a k-core filter that
removes everything, or a split with no evaluation case (no user has more than `history_len` items). Users who all have
a single interaction usually mean the history sat in a column the import did not expand; the hint says so. A protocol
with 0 validation or 0 test cases is refused here: every model would be evaluated on nothing later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.errors import UserError
from ..core.io_utils import atomic_dir
from .schema import Dataset

PROTOCOL_VERSION = 1
MAX_PREFIX = 200  # longest history stored per case; models truncate further


@dataclass
class ProtocolConfig:
    seed: int = 42
    kcore: int = 5
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    history_len: int = 5
    n_negatives: int = 20
    max_cases_per_user: int = 10


@dataclass
class Cases:
    """Evaluation cases of one split; `candidates[:, 0]` is the positive."""

    case_id: np.ndarray
    user_id: np.ndarray
    position: np.ndarray  # index of the target in the user's sequence
    target_ts: np.ndarray
    prefixes: list[list[int]]  # all items before the target (chronological, at most MAX_PREFIX)
    candidates: np.ndarray  # int64 [N, 1 + n_negatives]

    def __len__(self) -> int:
        return len(self.case_id)

    def histories(self, n: int) -> list[list[int]]:
        return [p[-n:] for p in self.prefixes]

    def subset(self, idx) -> "Cases":
        idx = np.asarray(idx)
        return Cases(self.case_id[idx], self.user_id[idx], self.position[idx], self.target_ts[idx],
                     [self.prefixes[i] for i in idx], self.candidates[idx])


@dataclass
class Protocol:
    config: ProtocolConfig
    items: list[int]  # item universe after the k-core filter
    train_users: list[int]
    val_users: list[int]
    test_users: list[int]
    sequences: dict[int, list[int]]  # filtered, chronological, every user
    timestamps: dict[int, list[int]]
    val: Cases
    test: Cases
    dataset_fingerprint: str = ""
    meta: dict = field(default_factory=dict)

    def train_sequences(self) -> dict[int, list[int]]:
        return {u: self.sequences[u] for u in self.train_users}


def kcore_filter(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of interactions kept by the iterated k-core filter."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    while True:
        uu, uc = np.unique(users[keep], return_counts=True)
        ii, ic = np.unique(items[keep], return_counts=True)
        bad_u = uu[uc < k]
        bad_i = ii[ic < k]
        if len(bad_u) == 0 and len(bad_i) == 0:
            return keep
        keep &= ~np.isin(users, bad_u) & ~np.isin(items, bad_i)


def fingerprint(ds: Dataset) -> str:
    h = hashlib.sha256()
    for arr in (ds.users, ds.item_ids, ds.timestamps):
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    h.update(json.dumps(sorted(ds.items)).encode())
    return h.hexdigest()[:16]


def empty_hint(ds: Dataset, k: int | None = None, history_len: int | None = None) -> str:
    """What to do when the k-core filter (`k`) or the windows (`history_len`) leave nothing, from the data's shape."""
    if not len(ds.users):
        return "the dataset has no interactions"
    counts = np.unique(ds.users, return_counts=True)[1]
    longest = int(counts.max())
    if longest == 1:
        return (f"all {len(counts)} users have a single interaction: is the history in a sequence column? (`data "
                "import` expands RecBole's item_id_list and 'user item1 item2 ...' files; import the source again)")
    if k is not None:
        if longest < k:
            return f"the longest user history has {longest} interactions: lower --kcore to {longest} or less"
        return (f"users and items with fewer than {k} interactions remove each other until none is left "
                f"(the most popular item has {int(np.unique(ds.item_ids, return_counts=True)[1].max())}): "
                "lower --kcore")
    return (f"a case needs more than --history-len {history_len} items in its user's sequence (the longest has "
            f"{longest}): lower --history-len, or split more users into validation and test")


def _make_cases(users: list[int], seqs, times, universe: np.ndarray, cfg: ProtocolConfig, salt: int) -> Cases:
    rows = []
    for u in users:
        seq = seqs[u]
        positions = list(range(cfg.history_len, len(seq)))[-cfg.max_cases_per_user:]
        for t in positions:
            rows.append((u, t))
    n_cand = 1 + cfg.n_negatives
    cands = np.zeros((len(rows), n_cand), dtype=np.int64)
    prefixes, tss = [], []
    for r, (u, t) in enumerate(rows):
        seq = seqs[u]
        rng = np.random.default_rng([cfg.seed, salt, u, t])
        pool = universe[~np.isin(universe, seq)]
        if len(pool) < cfg.n_negatives:
            raise UserError(f"user {u} has interacted with almost every item: only {len(pool)} possible negatives",
                            "lower --negatives-per-case or use a larger catalog")
        cands[r, 0] = seq[t]
        cands[r, 1:] = rng.choice(pool, size=cfg.n_negatives, replace=False)
        prefixes.append(seq[max(0, t - MAX_PREFIX):t])
        tss.append(times[u][t])
    return Cases(np.arange(len(rows), dtype=np.int64) + salt * 10_000_000,
                 np.asarray([u for u, _ in rows], np.int64), np.asarray([t for _, t in rows], np.int64),
                 np.asarray(tss, np.int64), prefixes, cands)


def build_protocol(ds: Dataset, cfg: ProtocolConfig | None = None) -> Protocol:
    cfg = cfg or ProtocolConfig()
    for flag, value, low in (("--kcore", cfg.kcore, 0), ("--history-len", cfg.history_len, 1),
                             ("--negatives-per-case", cfg.n_negatives, 1),
                             ("--max-cases-per-user", cfg.max_cases_per_user, 1)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if min(cfg.split) < 0 or abs(sum(cfg.split) - 1.0) > 1e-6:
        raise UserError(f"split fractions {cfg.split} must be >= 0 and sum to 1")
    keep = kcore_filter(ds.users, ds.item_ids, cfg.kcore)
    if keep.sum() == 0:
        raise UserError(f"the {cfg.kcore}-core filter removed every interaction", empty_hint(ds, k=cfg.kcore))
    sub = Dataset(ds.name, ds.items, ds.users[keep], ds.item_ids[keep], ds.timestamps[keep])
    st = sub.sequences_with_time()
    seqs = {u: s for u, (s, _) in st.items()}
    times = {u: t for u, (_, t) in st.items()}
    all_users = np.asarray(sorted(seqs), dtype=np.int64)
    perm = np.random.default_rng(cfg.seed).permutation(all_users)
    n_tr = int(round(cfg.split[0] * len(perm)))
    n_va = int(round(cfg.split[1] * len(perm)))
    train, val, test = perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]
    if len(val) == 0 or len(test) == 0:
        raise UserError(f"only {len(perm)} users after filtering: too few for an 8:1:1 split", "use a larger dataset")
    universe = np.unique(sub.item_ids)
    val_cases = _make_cases(sorted(val.tolist()), seqs, times, universe, cfg, salt=1)
    test_cases = _make_cases(sorted(test.tolist()), seqs, times, universe, cfg, salt=2)
    for name, cases, users in (("validation", val_cases, val), ("test", test_cases, test)):
        if not len(cases):
            longest = max(len(seqs[u]) for u in users.tolist())
            raise UserError(f"the protocol would have 0 {name} cases: no {name} user has more than --history-len "
                            f"{cfg.history_len} items (the longest has {longest})",
                            empty_hint(sub, history_len=cfg.history_len))
    return Protocol(cfg, universe.tolist(), sorted(train.tolist()), sorted(val.tolist()), sorted(test.tolist()),
                    seqs, times, val_cases, test_cases, dataset_fingerprint=fingerprint(ds))


def _cases_table(c: Cases) -> pa.Table:
    return pa.table({
        "case_id": c.case_id, "user_id": c.user_id, "position": c.position, "target_ts": c.target_ts,
        "prefix": pa.array(c.prefixes, type=pa.list_(pa.int64())),
        "candidates": pa.array(c.candidates.tolist(), type=pa.list_(pa.int64())),
    })


def _cases_from_table(t: pa.Table, n_candidates: int) -> Cases:
    cands = t.column("candidates").to_pylist() or np.zeros((0, n_candidates), np.int64)
    return Cases(np.asarray(t.column("case_id").to_pylist(), np.int64),
                 np.asarray(t.column("user_id").to_pylist(), np.int64),
                 np.asarray(t.column("position").to_pylist(), np.int64),
                 np.asarray(t.column("target_ts").to_pylist(), np.int64),
                 t.column("prefix").to_pylist(), np.asarray(cands, np.int64).reshape(len(cands), n_candidates))


def save_protocol(p: Protocol, out_dir: Path) -> Path:
    with atomic_dir(Path(out_dir), marker="protocol.json") as tmp:
        meta = {"format": "mmsrarec-protocol", "version": PROTOCOL_VERSION, "config": asdict(p.config),
                "dataset_fingerprint": p.dataset_fingerprint, "items": p.items, "train_users": p.train_users,
                "val_users": p.val_users, "test_users": p.test_users,
                "n_cases": {"val": len(p.val), "test": len(p.test)}}
        (tmp / "protocol.json").write_text(json.dumps(meta) + "\n")
        users = sorted(p.sequences)
        pq.write_table(pa.table({"user_id": users,
                                 "items": pa.array([p.sequences[u] for u in users], type=pa.list_(pa.int64())),
                                 "timestamps": pa.array([p.timestamps[u] for u in users], type=pa.list_(pa.int64()))}),
                       tmp / "sequences.parquet")
        pq.write_table(_cases_table(p.val), tmp / "cases_val.parquet")
        pq.write_table(_cases_table(p.test), tmp / "cases_test.parquet")
    return Path(out_dir)


def load_protocol(path: Path) -> Protocol:
    path = Path(path)
    meta_path = path / "protocol.json"
    if not meta_path.exists():
        raise UserError(f"{path} is not a protocol directory (no protocol.json)",
                        "create one with `mmsrarec-edge data protocol DATASET --out DIR`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != "mmsrarec-protocol" or meta.get("version", 0) > PROTOCOL_VERSION:
        raise UserError(f"{meta_path}: unsupported protocol format/version", "rebuild it with this version")
    cfg = meta["config"]
    cfg["split"] = tuple(cfg["split"])
    seq_t = pq.read_table(path / "sequences.parquet")
    users = seq_t.column("user_id").to_pylist()
    seqs = dict(zip(users, seq_t.column("items").to_pylist()))
    times = dict(zip(users, seq_t.column("timestamps").to_pylist()))
    config = ProtocolConfig(**cfg)
    n_cand = 1 + config.n_negatives
    return Protocol(config, meta["items"], meta["train_users"], meta["val_users"], meta["test_users"],
                    seqs, times, _cases_from_table(pq.read_table(path / "cases_val.parquet"), n_cand),
                    _cases_from_table(pq.read_table(path / "cases_test.parquet"), n_cand),
                    dataset_fingerprint=meta.get("dataset_fingerprint", ""))

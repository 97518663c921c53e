import numpy as np
import pytest

from mmsrarec_edge.core.errors import UserError
from mmsrarec_edge.data.protocol import ProtocolConfig, build_protocol, kcore_filter, load_protocol, save_protocol


def test_kcore_is_iterated_until_stable():
    # user 3 has 2 interactions -> removed; then item 30 drops to 1 -> removed; then user 2 drops to 2 -> removed.
    users = np.array([1, 1, 1, 2, 2, 2, 3, 3])
    items = np.array([10, 20, 30, 10, 20, 30, 30, 40])
    keep = kcore_filter(users, items, 2)
    assert set(zip(users[keep], items[keep])) == {(1, 10), (1, 20), (2, 10), (2, 20), (1, 30), (2, 30)}
    keep3 = kcore_filter(users, items, 3)
    assert keep3.sum() == 0


def test_split_is_8_1_1_disjoint_and_seeded(tiny_synth):
    p = build_protocol(tiny_synth, ProtocolConfig(seed=7))
    tr, va, te = set(p.train_users), set(p.val_users), set(p.test_users)
    n = len(tr) + len(va) + len(te)
    assert not (tr & va or tr & te or va & te)
    assert len(tr) == round(0.8 * n) and len(va) == round(0.1 * n)
    p2 = build_protocol(tiny_synth, ProtocolConfig(seed=7))
    assert p2.test_users == p.test_users and np.array_equal(p2.test.candidates, p.test.candidates)
    p3 = build_protocol(tiny_synth, ProtocolConfig(seed=8))
    assert p3.test_users != p.test_users


def test_cases_follow_the_protocol(tiny_synth):
    cfg = ProtocolConfig(seed=1, max_cases_per_user=3, history_len=5, n_negatives=20)
    p = build_protocol(tiny_synth, cfg)
    for c, users in ((p.val, p.val_users), (p.test, p.test_users)):
        assert set(c.user_id.tolist()) <= set(users)
        assert np.bincount(c.user_id).max() <= 3
        assert c.candidates.shape[1] == 21
        for r in range(len(c)):
            seq = p.sequences[int(c.user_id[r])]
            t = int(c.position[r])
            assert c.candidates[r, 0] == seq[t]  # column 0 is the true next item
            assert c.prefixes[r] == seq[:t] and len(c.prefixes[r]) >= 5
            negs = c.candidates[r, 1:]
            assert len(set(negs.tolist())) == 20 and not set(negs.tolist()) & set(seq)  # never interacted
        # the most recent windows are kept
        last_pos = {int(u): len(p.sequences[int(u)]) - 1 for u in c.user_id}
        assert all(int(pos) > last_pos[int(u)] - 3 for u, pos in zip(c.user_id, c.position))


def test_save_load_roundtrip(tiny_protocol, tmp_path):
    save_protocol(tiny_protocol, tmp_path / "p")
    q = load_protocol(tmp_path / "p")
    assert q.train_users == tiny_protocol.train_users and q.items == tiny_protocol.items
    assert np.array_equal(q.test.candidates, tiny_protocol.test.candidates)
    assert q.test.prefixes == tiny_protocol.test.prefixes
    assert q.sequences == tiny_protocol.sequences
    assert q.dataset_fingerprint == tiny_protocol.dataset_fingerprint


def test_errors_are_clear(tiny_synth, tmp_path):
    with pytest.raises(UserError, match="removed every interaction"):
        build_protocol(tiny_synth, ProtocolConfig(kcore=10_000))
    with pytest.raises(UserError, match="not a protocol directory"):
        load_protocol(tmp_path)


@pytest.mark.parametrize("change, needle", [
    ({"n_negatives": -1}, "--negatives-per-case must be >= 1, got -1"),
    ({"history_len": 0}, "--history-len must be >= 1"),
    ({"kcore": -1}, "--kcore must be >= 0"), ({"max_cases_per_user": 0}, "--max-cases-per-user must be >= 1"),
    ({"split": (1.2, -0.1, -0.1)}, "must be >= 0 and sum to 1"), ({"split": (0.5, 0.1, 0.1)}, "sum to 1"),
])
def test_out_of_range_settings_are_user_errors(tiny_synth, change, needle):
    with pytest.raises(UserError, match=needle):
        build_protocol(tiny_synth, ProtocolConfig(**change))


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mmsrarec_edge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env={"MMSRAREC_QUIET": "1", "PATH": "/usr/bin:/bin"})


def test_cli_single_interaction_users_name_the_cause(tmp_path):
    """Issue 17, finding 3: on one-interaction users (a sequence column imported as one item per user) the k-core
    hint names that cause, and --kcore 1 no longer writes a protocol with 0 validation/test cases (evaluate used to
    crash on it): one line, exit 2, nothing written. An old 0-case protocol is refused by evaluate in one line."""
    from mmsrarec_edge.data.schema import Dataset, Item, save_dataset

    n = 40
    save_dataset(Dataset("one", {i: Item(i, f"T{i}") for i in range(1, 8)}, np.arange(1, n + 1),
                         np.arange(n) % 7 + 1, np.zeros(n, np.int64)), tmp_path / "ds")
    r = _cli("data", "protocol", tmp_path / "ds", "--out", tmp_path / "p")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "the 5-core filter removed every interaction" in r.stderr
    assert "all 40 users have a single interaction: is the history in a sequence column?" in r.stderr
    r = _cli("data", "protocol", tmp_path / "ds", "--out", tmp_path / "p", "--kcore", "1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "the protocol would have 0 validation cases" in r.stderr and "single interaction" in r.stderr
    assert not (tmp_path / "p").exists()

    # a protocol written before this check (0 test cases) : evaluate says so instead of a reshape error
    from mmsrarec_edge.data.protocol import Cases, Protocol, ProtocolConfig, save_protocol

    empty = Cases(*(np.zeros(0, np.int64) for _ in range(4)), [], np.zeros((0, 21), np.int64))
    seqs = {u: [int(u % 7 + 1)] for u in range(1, n + 1)}
    save_protocol(Protocol(ProtocolConfig(kcore=1), list(range(1, 8)), list(range(1, 33)), list(range(33, 37)),
                           list(range(37, 41)), seqs, {u: [0] for u in seqs}, empty, empty), tmp_path / "old")
    r = _cli("evaluate", tmp_path / "old", "--out", tmp_path / "report")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "has 0 test cases: there is nothing to evaluate" in r.stderr and not (tmp_path / "report").exists()

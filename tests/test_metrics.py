import numpy as np
import pytest

from mmsrarec_edge.core import metrics


def test_hand_computed_ranks():
    scores = np.array([
        [0.9, 0.1, 0.2, 0.3],  # rank 0
        [0.5, 0.9, 0.1, 0.2],  # rank 1
        [0.1, 0.9, 0.8, 0.7],  # rank 3
    ])
    pc = metrics.per_case(scores, ks=(1, 2))
    assert pc["HR@1"].tolist() == [1, 0, 0]
    assert pc["HR@2"].tolist() == [1, 1, 0]
    assert pc["NDCG@2"][1] == pytest.approx(1 / np.log2(3))
    assert pc["AUC"].tolist() == pytest.approx([1.0, 2 / 3, 0.0])


def test_ties_count_against_the_model():
    scores = np.array([[1.0, 1.0, 0.0, 0.0]])
    pc = metrics.per_case(scores, ks=(1, 2))
    assert pc["HR@1"][0] == 0 and pc["HR@2"][0] == 1
    assert pc["AUC"][0] == pytest.approx((2 + 0.5) / 3)
    const = metrics.per_case(np.zeros((5, 21)), ks=(5,))
    assert const["HR@5"].sum() == 0 and const["AUC"].mean() == pytest.approx(0.5)


def test_bootstrap_interval_contains_mean_and_widens_with_user_clustering():
    rng = np.random.default_rng(0)
    n_users, per_user = 50, 10
    quality = rng.random(n_users)  # users differ a lot: cases within a user are correlated
    scores = np.zeros((n_users * per_user, 21))
    scores[:, 1:] = rng.random((n_users * per_user, 20))
    scores[:, 0] = np.repeat(quality, per_user)
    users = np.repeat(np.arange(n_users), per_user)
    by_user = metrics.summarize(scores, users, n_boot=500)
    by_case = metrics.summarize(scores, None, n_boot=500)
    for name in ("HR@5", "NDCG@5", "AUC"):
        r = by_user[name]
        assert r["lo"] <= r["mean"] <= r["hi"]

    def width(r):
        return r["AUC"]["hi"] - r["AUC"]["lo"]

    assert width(by_user) > 1.5 * width(by_case)
    assert by_user["_n"] == {"cases": 500, "users": 50}


def test_rejects_bad_scores():
    with pytest.raises(ValueError, match="NaN"):
        metrics.per_case(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        metrics.per_case(np.zeros(5))

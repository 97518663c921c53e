"""The content-only baseline: logistic regression on keyword features of (history, candidate). Torch-free (numpy).

A reference that says whether the keywords carry signal for the next item, scored under the same protocol as every
other model (`evaluate --keywords STORE`). It reads nothing but the keyword store and the training users' sequences:
no item ids, no SASRec, and (in the "content" row) no popularity.

Features of a candidate c after a history h_1..h_n (the last n items, n = the protocol's history_len), with K(i) the
set of item i's keywords (text then image, lower-cased) and |K(c)| its size:

    overlap_history     |K(c) & (K(h_1) | ... | K(h_n))| / |K(c)|     share of c's keywords seen in the history
    overlap_last        |K(c) & K(h_n)| / |K(c)|                      ... in the last item
    history_frequency   mean_j |K(c) & K(h_j)| / |K(c)|               ... weighted by how many history items have it
    transition_last     mean over (a in K(h_n), b in K(c)) of PMI(a -> b)
    transition_history  mean_j of the same for h_j -> c
    no_keywords         1 when c has no keywords (the features above are then 0)
    [log_popularity]    log(1 + training interactions of c): only in the "content + popularity" row

PMI(a -> b) = log P(a -> b) / (P(a ->) P(-> b)) over keyword pairs of consecutive items (i -> j: every a in K(i) with
every b in K(j)) in the training users' sequences, add-`smoothing` smoothed. The transition counts are CROSS-FITTED
for the windows the regression is fitted on: the training users are split into `folds` folds and a window's
features use counts from the other folds only, so no window sees its own transition (at test time: counts from every
training user, none of whom is a test user).

Fitting: every training user's windows (target position t >= history_len, like the protocol's cases; at most
`max_windows_per_user`, the most recent), each with its positive and `negatives` items drawn uniformly from the items
that user never interacted with; features standardised; L2-regularised logistic regression by Newton's method.
The score of a candidate is the fitted logit (ties count against the model, as for every row).

Memory: a few item x item matrices (float64) and one keyword x keyword one: fine for catalogs of a few thousand
protocol items (ml100k_mm: 1,349), about 1 GB each at 10,000 items; larger catalogs would need the features computed in
keyword space per case instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

FEATURES = ("overlap_history", "overlap_last", "history_frequency", "transition_last", "transition_history",
            "no_keywords")
POPULARITY_FEATURE = "log_popularity"


@dataclass
class ContentConfig:
    history_len: int = 5
    negatives: int = 20
    max_windows_per_user: int = 0  # 0 = every window
    max_vocab: int = 4000  # the most frequent keywords over the catalog; rarer ones are ignored
    smoothing: float = 1.0
    folds: int = 5
    l2: float = 1e-2
    popularity: bool = False
    seed: int = 0


def _norm(k: str) -> str:
    return " ".join(str(k).lower().split())


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (intercept unpenalised) by Newton's method. Returns (w, b)."""
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    pen = np.full(d + 1, l2 * n)
    pen[-1] = 0.0
    for _ in range(iters):
        z = xa @ theta
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))
        grad = xa.T @ (p - y) + pen * theta
        hess = (xa * (p * (1 - p))[:, None]).T @ xa + np.diag(pen) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return theta[:-1], float(theta[-1])


class ContentBaseline:
    """Fit with `fit(train_sequences)`, then `score(histories, candidates)` -> logits [N, C]."""

    def __init__(self, keywords: dict[int, Sequence[str]], items: Sequence[int], cfg: ContentConfig | None = None):
        self.cfg = cfg or ContentConfig()
        if self.cfg.history_len < 1 or self.cfg.negatives < 1 or self.cfg.folds < 2:
            raise ValueError("history_len and negatives must be >= 1 and folds >= 2")
        self.items = np.asarray(sorted({int(i) for i in items}), np.int64)  # items outside the protocol never appear
        self.row = {int(i): k for k, i in enumerate(self.items)}
        kw_sets = {int(i): {_norm(k) for k in kws if _norm(k)} for i, kws in keywords.items() if int(i) in self.row}
        df: dict[str, int] = {}
        for s in kw_sets.values():
            for k in s:
                df[k] = df.get(k, 0) + 1
        vocab = sorted(df, key=lambda k: (-df[k], k))[: self.cfg.max_vocab]
        col = {k: j for j, k in enumerate(vocab)}
        self.vocab = vocab
        n = len(self.items)
        # One extra all-zero row (index n): padding and items the store does not know.
        self.K = np.zeros((n + 1, len(vocab)), np.float64)
        for i, s in kw_sets.items():
            for k in s:
                if k in col:
                    self.K[self.row[i], col[k]] = 1.0
        self.nk = self.K.sum(1)
        self.Kn = self.K / np.maximum(self.nk, 1.0)[:, None]
        self.O = self.K @ self.K.T  # item x item shared-keyword counts
        self.w: np.ndarray | None = None
        self.b = 0.0
        self.mu = self.sd = None
        self.S = None  # item x item transition score, from every training user
        self.pop = np.zeros(n + 1)
        self.info: dict = {}

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURES + ((POPULARITY_FEATURE,) if self.cfg.popularity else ())

    # -- counts ---------------------------------------------------------------------------------------------------
    def _rows(self, ids) -> np.ndarray:
        pad = len(self.items)
        return np.asarray([self.row.get(int(i), pad) for i in ids], np.int64)

    def _transitions(self, sequences) -> np.ndarray:
        n = len(self.items) + 1
        m = np.zeros((n, n), np.float64)
        for seq in sequences:
            r = self._rows(seq)
            if len(r) > 1:
                np.add.at(m, (r[:-1], r[1:]), 1.0)
        return m

    def _scores_from(self, m: np.ndarray) -> np.ndarray:
        """Item x item transition score: mean PMI over keyword pairs, from item transition counts `m`."""
        a = self.cfg.smoothing
        c = self.K.T @ m @ self.K  # keyword -> keyword counts
        v = c.shape[0]
        tot = c.sum() + a * v * v
        pmi = (np.log(c + a) - np.log(c.sum(1, keepdims=True) + a * v) - np.log(c.sum(0, keepdims=True) + a * v)
               + np.log(tot))
        return self.Kn @ pmi @ self.Kn.T

    # -- features -------------------------------------------------------------------------------------------------
    def _features(self, hist_rows: np.ndarray, cand_rows: np.ndarray, S: np.ndarray, pop: np.ndarray) -> np.ndarray:
        """hist_rows [N, n] (padding = the zero row), cand_rows [N, C] -> features [N, C, F]."""
        N, C = cand_rows.shape
        pad = len(self.items)
        valid = (hist_rows != pad).astype(np.float64)
        nh = np.maximum(valid.sum(1), 1.0)[:, None]
        last = hist_rows[:, -1]
        nk = self.nk[cand_rows]
        has = nk > 0
        denom = np.maximum(nk, 1.0)
        out = np.zeros((N, C, len(self.feature_names)))
        for s in range(0, N, 64):  # the union needs [chunk, C, V]
            e = min(N, s + 64)
            union = self.K[hist_rows[s:e]].max(1)
            out[s:e, :, 0] = np.einsum("ncv,nv->nc", self.K[cand_rows[s:e]], union) / denom[s:e]
        out[:, :, 1] = self.O[last[:, None], cand_rows] / denom
        out[:, :, 2] = (self.O[hist_rows[:, :, None], cand_rows[:, None, :]] * valid[:, :, None]).sum(1) / nh / denom
        out[:, :, 3] = S[last[:, None], cand_rows]
        out[:, :, 4] = (S[hist_rows[:, :, None], cand_rows[:, None, :]] * valid[:, :, None]).sum(1) / nh
        out[:, :, 5] = (~has).astype(np.float64)
        if self.cfg.popularity:
            out[:, :, 6] = np.log1p(pop[cand_rows])
        return out

    def _hist_rows(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        n, pad = self.cfg.history_len, len(self.items)
        out = np.full((len(histories), n), pad, np.int64)
        for k, h in enumerate(histories):
            h = list(h)[-n:]
            if h:
                out[k, n - len(h):] = self._rows(h)
        return out

    def _windows(self, users, sequences, rng):
        """(history rows, candidate rows [positive first]) of the training windows of `users`."""
        cfg = self.cfg
        hists, cands = [], []
        universe = np.arange(len(self.items))
        for u in users:
            seq = sequences[u]
            pos = list(range(cfg.history_len, len(seq)))
            if cfg.max_windows_per_user:
                pos = pos[-cfg.max_windows_per_user:]
            if not pos:
                continue
            rows = self._rows(seq)
            pool = universe[~np.isin(universe, rows)]
            if len(pool) < cfg.negatives:
                continue
            for t in pos:
                hists.append(rows[t - cfg.history_len:t])
                cands.append(np.concatenate([[rows[t]], rng.choice(pool, cfg.negatives, replace=False)]))
        if not hists:
            return np.zeros((0, cfg.history_len), np.int64), np.zeros((0, 1 + cfg.negatives), np.int64)
        return np.asarray(hists, np.int64), np.asarray(cands, np.int64)

    # -- fit / score ----------------------------------------------------------------------------------------------
    def fit(self, train_sequences: dict[int, list[int]]) -> "ContentBaseline":
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        users = sorted(train_sequences)
        fold_of = dict(zip(users, rng.permutation(len(users)) % cfg.folds))
        m_all = self._transitions(train_sequences[u] for u in users)
        n = len(self.items) + 1
        pop_all = np.bincount(np.concatenate([self._rows(train_sequences[u]) for u in users] or [np.zeros(0, int)]),
                              minlength=n).astype(np.float64)
        xs, ys = [], []
        for f in range(cfg.folds):
            fu = [u for u in users if fold_of[u] == f]
            hist, cand = self._windows(fu, train_sequences, rng)
            if not len(hist):
                continue
            m_f = self._transitions(train_sequences[u] for u in fu)
            pop_f = np.bincount(np.concatenate([self._rows(train_sequences[u]) for u in fu]),
                                minlength=n).astype(np.float64)
            x = self._features(hist, cand, self._scores_from(m_all - m_f), pop_all - pop_f)
            xs.append(x.reshape(-1, x.shape[-1]))
            y = np.zeros(cand.shape)
            y[:, 0] = 1.0
            ys.append(y.ravel())
        if not xs:
            raise ValueError(f"no training window: no training user has more than {cfg.history_len} items")
        x, y = np.concatenate(xs), np.concatenate(ys)
        self.mu, self.sd = x.mean(0), x.std(0)
        self.sd[self.sd < 1e-12] = 1.0
        self.w, self.b = fit_logistic((x - self.mu) / self.sd, y, cfg.l2)
        self.S, self.pop = self._scores_from(m_all), pop_all
        self.info = {"windows": int(len(y) // (1 + cfg.negatives)), "vocabulary": len(self.vocab),
                     "items_without_keywords": int((self.nk[:-1] == 0).sum()),
                     "weights": {k: round(float(v), 4) for k, v in zip(self.feature_names, self.w)},
                     "config": asdict(cfg)}
        return self

    def features(self, histories: Sequence[Sequence[int]], candidates: np.ndarray) -> np.ndarray:
        """Raw (unstandardised) features [N, C, F] of test cases, from every training user's counts."""
        if self.S is None:
            raise RuntimeError("fit() first")
        return self._features(self._hist_rows(histories), self._rows(np.asarray(candidates).ravel()).reshape(
            np.shape(candidates)), self.S, self.pop)

    def score(self, histories: Sequence[Sequence[int]], candidates: np.ndarray) -> np.ndarray:
        x = self.features(histories, candidates)
        return ((x - self.mu) / self.sd) @ self.w + self.b

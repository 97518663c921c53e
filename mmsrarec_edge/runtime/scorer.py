"""Shared-prefix candidate scoring in numpy over ONNX Runtime: the runtime's hot path.

Every candidate's prompt is [shared prefix] + [its own suffix]; the score is p(yes) / (p(yes) + p(no)) =
sigmoid(l_yes - l_no) from the yes/no logits at each suffix's last real token. Two paths, same scores:

- `suffix-scorer` (default when the bundle has `recommender.scorer`, exporter/suffix_graph.py): ONE call takes the
  prefix embeddings and the right-padded suffixes of up to `max_batch` candidates. Inside, the prefix runs at batch 1
  and the suffixes attend to its KV through shared-prefix attention (all candidates' queries in one matmul per KV head;
  the KV is never copied per candidate), and the last layer runs at the read slots only. Later chunks reuse the
  returned prefix KV. It is the faster path (one call instead of two, no KV copied per candidate, the last layer
  at the read slots only); benchmarks/results/latency/report.md has the figures.
- `expanded-kv` (bundles without the scorer graph, e.g. a decoder family suffix_graph.py does not cover): the prefix
  runs once through the merged decoder at batch 1 and past 0; its KV cache is expanded along the batch axis to the C
  candidates of a chunk and all suffixes run in one call: right-padded, the 2D mask covering the prefix plus each row's
  real suffix tokens, position ids continuing from the prefix length, `logits_index` at each row's last real token.

Right padding is safe in both: pad slots come after every real token, so the causal mask already hides them from the
real ones, and their own outputs are never read.

KV expansion (`expand`, expanded-kv path): `view` (np.broadcast_to, a zero-copy stride-0 view that onnxruntime's
binding copies into its own buffer once), `contiguous` (broadcast_to + ascontiguousarray) or `repeat` (np.repeat).
`view` is the default: it skips the numpy-side copy and leaves only the binding's; it measured fastest of the three on
the default model. All three give bit-identical scores.
Torch-free.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..core.rope_index import MRope
from ..core.scores import yes_probability
from .llm import Decoder, Embedder, SuffixScorer

EXPANSIONS = ("view", "contiguous", "repeat")


class _Clock:
    """`with clock("part"):` adds the block's milliseconds to timings["part"]; a no-op without a dict."""

    def __init__(self, timings: dict | None):
        self.timings = timings

    @contextmanager
    def __call__(self, part: str):
        if self.timings is None:
            yield
            return
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[part] = self.timings.get(part, 0.0) + (time.perf_counter() - t) * 1e3


@dataclass(frozen=True)
class PrefixState:
    """The shared prefix's KV cache at batch 1 and its length in tokens; `logits`: the yes/no logits [2] at the
    prefix's own last token when the merged decoder computed them (its prefill reads that slot), else None."""

    past: dict[str, np.ndarray]
    length: int
    logits: np.ndarray | None = None
    next_position: int | None = None  # where a suffix's positions start (multimodal rope); None: `length`


@dataclass(frozen=True)
class CandidateLogits:
    """The yes/no logits of each candidate at its read slots ([C, K, 2] float32, input order) and the prefix state the
    call computed: the decoder path's prefill, or the scorer graph's prefix KV when a later chunk needed it (the
    full prefix, as its first call returned it); None when the call kept none."""

    logits: np.ndarray
    prefix: PrefixState | None

    @property
    def scores(self) -> np.ndarray:
        """p(yes) at each candidate's first read slot (float64 [C])."""
        return yes_probability(self.logits[:, 0, 0], self.logits[:, 0, 1])


def expand_kv(past: dict[str, np.ndarray], batch: int, how: str = "view") -> dict[str, np.ndarray]:
    """Batch-1 KV -> batch `batch`, by one of EXPANSIONS (see the module docstring)."""
    if how == "view":
        return {n: np.broadcast_to(v, (batch, *v.shape[1:])) for n, v in past.items()}
    if how == "contiguous":
        return {n: np.ascontiguousarray(np.broadcast_to(v, (batch, *v.shape[1:]))) for n, v in past.items()}
    if how == "repeat":
        return {n: np.repeat(v, batch, axis=0) for n, v in past.items()}
    raise ValueError(f"unknown KV expansion {how!r} (expected one of {EXPANSIONS})")


class CandidateScorer:
    """Scores candidate suffixes after a shared prefix with a `yes_no` decoder, or with the suffix-scorer graph.
    Stateless between calls, so one instance serves many threads (onnxruntime's `run` is thread-safe). `decoder` may
    be None when a `suffix_scorer` is given (then an empty prefix, `prefill`, `score_suffixes` and `score_naive`,
    which need the merged decoder, raise ValueError), or a zero-argument factory: the merged decoder is then opened
    on first use only (beside the scorer graph it is needed only for an empty prefix or per-candidate scoring, and at
    real sizes opening it costs seconds and its weights' worth of memory)."""

    def __init__(self, decoder: Decoder | Callable[[], Decoder] | None, embedder: Embedder, pad_id: int,
                 max_batch: int = 32, expand: str = "view", suffix_scorer: SuffixScorer | None = None,
                 rope: MRope | None = None):
        self._decoder_factory = None
        if decoder is not None and not isinstance(decoder, Decoder) and callable(decoder):
            if suffix_scorer is None:
                decoder = decoder()  # the only scoring path: open it now
            else:
                self._decoder_factory, decoder = decoder, None
        if decoder is None and suffix_scorer is None:
            raise ValueError("candidate scoring needs a yes_no decoder or a suffix-scorer graph")
        if decoder is not None and decoder.layout.head != "yes_no":
            raise ValueError("candidate scoring needs a decoder exported with the yes_no head")
        self._decoder_lock = threading.Lock()
        if expand not in EXPANSIONS:
            raise ValueError(f"unknown KV expansion {expand!r} (expected one of {EXPANSIONS})")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.decoder, self.embedder = decoder, embedder
        self.pad_id, self.max_batch, self.expand = int(pad_id), int(max_batch), expand
        self.suffix_scorer = suffix_scorer
        # A multimodal-rope decoder's positions (core/rope_index.py): 3-D, from the ids; a suffix starts at the
        # prefix's largest position + 1. None: 1-D positions counting tokens.
        self.rope = rope

    @property
    def path(self) -> str:
        """Which suffix call scores candidates: "suffix-scorer" (shared-prefix attention) or "expanded-kv"."""
        return "suffix-scorer" if self.suffix_scorer is not None else "expanded-kv"

    def map_decoder(self, fn: Callable[[Decoder], None]) -> None:
        """Apply `fn` to the merged decoder now if it is open, else as soon as it is opened (serving wraps its
        session for Triton BLS this way without forcing it open)."""
        if self.decoder is not None:
            fn(self.decoder)
        elif self._decoder_factory is not None:
            make = self._decoder_factory

            def opened() -> Decoder:
                decoder = make()
                fn(decoder)
                return decoder

            self._decoder_factory = opened

    def _need_decoder(self) -> Decoder:
        if self.decoder is None and self._decoder_factory is not None:
            with self._decoder_lock:
                if self.decoder is None:
                    decoder = self._decoder_factory()
                    if decoder.layout.head != "yes_no":
                        raise ValueError("candidate scoring needs a decoder exported with the yes_no head")
                    self.decoder = decoder
        if self.decoder is None:
            raise ValueError("this needs the merged yes_no decoder; the scorer was built with the suffix-scorer graph "
                             "only")
        return self.decoder

    def prefill(self, prefix: Sequence[int], features: Sequence[np.ndarray] | None = None) -> PrefixState:
        """Run the prefix once (batch 1, past length 0) and keep its KV cache (and its last token's yes/no logits)."""
        decoder = self._need_decoder()
        P = len(prefix)
        if P == 0:
            return PrefixState(decoder.empty_past(1), 0)
        embeds, mask = self.embedder.embed_rows([list(prefix)], self.pad_id, left=False, features=[features])
        positions, nxt = self._positions([list(prefix)], P)
        yes_no, present = decoder.run(embeds, mask, positions, None, logits_index=np.array([[P - 1]], np.int64))
        return PrefixState(present, P, yes_no[0, 0], int(nxt[0]))

    def _positions(self, rows: list[list[int]], width: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded rows starting at position `start` -> (position ids [B, width] or, with a rope, [3, B, width];
        each row's next position)."""
        if self.rope is None:
            pos = np.broadcast_to(np.arange(start, start + width, dtype=np.int64), (len(rows), width))
            return pos, np.array([start + len(r) for r in rows], np.int64)
        return self.rope.batch(rows, width, left=False, starts=[start] * len(rows))

    @staticmethod
    def _read_slots(chunk: list[list[int]], slots) -> np.ndarray:
        """logits_index of a chunk: each suffix's last real token, or the given slots (one row per suffix)."""
        if slots is None:
            return np.array([[len(s) - 1] for s in chunk], np.int64)
        index = np.asarray(slots, np.int64)
        if index.ndim != 2 or len(index) != len(chunk) or any((r < 0).any() or (r >= len(s)).any()
                                                              for r, s in zip(index, chunk)):
            raise ValueError("slots: one row of in-range slot indices per suffix, the same count for every suffix")
        return index

    def suffix_logits(self, state: PrefixState, suffixes: Sequence[Sequence[int]],
                      features: Sequence[Sequence[np.ndarray] | None] | None = None, timings: dict | None = None,
                      slots: Sequence[Sequence[int]] | None = None, chunks: Sequence[int] | None = None
                      ) -> np.ndarray:
        """Yes/no logits [C, K, 2] of each suffix after the prefix in `state` (expanded-KV path), read at each suffix's
        last real token (K = 1) or at `slots` (per suffix, K slot indices within it); chunks of at most `max_batch`
        suffixes per call (or the sizes in `chunks`). `timings` (optional dict) gets the milliseconds of "embed" and
        "candidates" added."""
        decoder = self._need_decoder()
        tm = _Clock(timings)
        if any(len(s) == 0 for s in suffixes):
            raise ValueError("every candidate suffix needs at least one token")
        parts = []
        P = state.length
        for start, end in self._chunk_bounds(len(suffixes), chunks):
            chunk = [list(s) for s in suffixes[start:end]]
            feats = features[start:end] if features is not None else None
            index = self._read_slots(chunk, None if slots is None else slots[start:end])
            C, S = len(chunk), max(len(s) for s in chunk)
            with tm("embed"):
                embeds, smask = self.embedder.embed_rows(chunk, self.pad_id, left=False, features=feats)
            mask = np.concatenate([np.ones((C, P), np.int64), smask], axis=1)
            positions, _ = self._positions(chunk, S, P if state.next_position is None else state.next_position)
            with tm("candidates"):
                yes_no, _ = decoder.run(embeds, mask, positions, expand_kv(state.past, C, self.expand),
                                        logits_index=index, want_present=False)
            parts.append(yes_no)
        return np.concatenate(parts) if parts else np.zeros((0, 1, 2), np.float32)

    def score_suffixes(self, state: PrefixState, suffixes: Sequence[Sequence[int]],
                       features: Sequence[Sequence[np.ndarray] | None] | None = None,
                       timings: dict | None = None) -> np.ndarray:
        """p(yes) of each suffix after the prefix in `state`; chunks of at most `max_batch` suffixes per call.
        `timings` (optional dict) gets the milliseconds of "embed" and "candidates" added."""
        if not len(suffixes):
            return np.zeros(0, np.float64)
        yes_no = self.suffix_logits(state, suffixes, features, timings)
        return yes_probability(yes_no[:, 0, 0], yes_no[:, 0, 1])

    def score(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]],
              prefix_features: Sequence[np.ndarray] | None = None,
              suffix_features: Sequence[Sequence[np.ndarray] | None] | None = None,
              timings: dict | None = None) -> np.ndarray:
        """Shared-prefix scores of `suffixes` (float64 [C], in input order). `timings` (optional dict) gets the
        milliseconds of its parts added: "embed" (token embeddings, image features spliced), and "prefill" (which
        includes the prefix's own embedding) + "candidates" (expanded-kv path) or "prefill+candidates" (suffix-scorer
        path: one call does both)."""
        if not len(suffixes):
            return np.zeros(0, np.float64)
        return self.candidate_logits(prefix, suffixes, prefix_features, suffix_features, timings).scores

    def candidate_logits(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]],
                         prefix_features: Sequence[np.ndarray] | None = None,
                         suffix_features: Sequence[Sequence[np.ndarray] | None] | None = None,
                         timings: dict | None = None, slots: Sequence[Sequence[int]] | None = None,
                         chunks: Sequence[int] | None = None) -> CandidateLogits:
        """What `score` computes, before the score: the yes/no logits of every candidate at its last real token (or
        at `slots`, K per suffix) and the prefix state, on this scorer's path. Same `timings` parts as `score`.
        `chunks`: the candidates per call, in order (default: `max_batch` each; the parity gate fixes the split)."""
        if self.suffix_scorer is not None and len(prefix):
            return self._scorer_graph_logits(prefix, suffixes, prefix_features, suffix_features, timings, slots,
                                             chunks)
        with _Clock(timings)("prefill"):
            state = self.prefill(prefix, prefix_features)
        return CandidateLogits(self.suffix_logits(state, suffixes, suffix_features, timings, slots, chunks), state)

    def _chunk_bounds(self, n: int, chunks: Sequence[int] | None) -> list[tuple[int, int]]:
        """(start, end) of each call's candidates: `max_batch` at a time, or the given sizes (each 1..max_batch)."""
        if chunks is None:
            return [(s, min(s + self.max_batch, n)) for s in range(0, n, self.max_batch)]
        if sum(chunks) != n or any(not 1 <= c <= self.max_batch for c in chunks):
            raise ValueError(f"chunks {list(chunks)} must be sizes in 1..{self.max_batch} summing to {n}")
        ends = np.cumsum(chunks).tolist()
        return list(zip([0, *ends[:-1]], ends))

    def _scorer_graph_logits(self, prefix, suffixes, prefix_features, suffix_features, timings=None,
                             slots=None, chunks=None) -> CandidateLogits:
        """Suffix-scorer path: prefix and the first `max_batch` candidates in one call; later chunks reuse the
        returned prefix KV. They re-feed the prefix's last token over the KV of the others rather than an empty
        prefix: a zero-length query axis breaks the graph's reshapes (ONNX Reshape reads a 0 in a target shape as
        "copy that input dim"), and one token costs nothing."""
        if any(len(s) == 0 for s in suffixes):
            raise ValueError("every candidate suffix needs at least one token")
        parts = []
        tm = _Clock(timings)
        with tm("embed"):
            pre, _ = self.embedder.embed_rows([list(prefix)], self.pad_id, left=False, features=[prefix_features])
        pre_pos, after = self._positions([list(prefix)], len(prefix))
        after = int(after[0])  # where the suffixes' positions start
        past, state = None, None
        for start, end in self._chunk_bounds(len(suffixes), chunks):
            chunk = [list(s) for s in suffixes[start:end]]
            feats = suffix_features[start:end] if suffix_features is not None else None
            index = self._read_slots(chunk, None if slots is None else slots[start:end])
            with tm("embed"):
                embeds, smask = self.embedder.embed_rows(chunk, self.pad_id, left=False, features=feats)
            more = end < len(suffixes)
            positions = self._positions(chunk, embeds.shape[1], after)[0] if self.rope is not None else None
            with tm("prefill+candidates"):
                yes_no, present = self.suffix_scorer.run(embeds, smask, index, pre, past, want_present=more,
                                                         positions=positions,
                                                         prefix_positions=pre_pos if self.rope is not None else None)
            parts.append(yes_no)
            if more and past is None:
                state = PrefixState(present, len(prefix), None, after)
                pre, past = pre[:, -1:], {n: v[:, :, :-1] for n, v in present.items()}
                pre_pos = pre_pos[..., -1:]
        return CandidateLogits(np.concatenate(parts) if parts else np.zeros((0, 1, 2), np.float32), state)

    def score_naive(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]],
                    prefix_features: Sequence[np.ndarray] | None = None,
                    suffix_features: Sequence[Sequence[np.ndarray] | None] | None = None) -> np.ndarray:
        """Reference: one full prompt per candidate, batch 1, past length 0 (what the paper does)."""
        decoder = self._need_decoder()
        out = np.empty(len(suffixes), np.float64)
        for c, suffix in enumerate(suffixes):
            row = list(prefix) + list(suffix)
            feats = list(prefix_features or []) + list((suffix_features[c] if suffix_features else None) or [])
            embeds, mask = self.embedder.embed_rows([row], self.pad_id, left=False, features=[feats])
            yes_no, _ = decoder.run(embeds, mask, self._positions([row], len(row))[0], None,
                                    logits_index=np.array([[len(row) - 1]], np.int64), want_present=False)
            out[c] = yes_probability(yes_no[0, 0, 0], yes_no[0, 0, 1])
        return out

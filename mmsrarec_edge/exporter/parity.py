"""Parity gate: every exported graph runs through the shipped runtime code in ONNX Runtime and is compared with PyTorch;
a miss stops the export.

What is measured is what the runtime runs. Each graph file is opened by the runtime's session code with the options
it gives that variant (runtime/sessions.open_session: ORT_ENABLE_EXTENDED on the CPU, ORT_ENABLE_ALL on GPUs) and
wrapped in the runtime's object (runtime/llm.py), and the decoders are driven by the runtime's own loops: the
summarizer's decoder by the numpy greedy generator (runtime/summarizer.greedy_steps: left-padded prefill at past 0,
then one step on the returned KV with the token it picked), the recommender's decoder and scorer graphs by
runtime/scorer.CandidateScorer on its two paths (expanded KV: the prefix once at batch 1, its KV broadcast to the
candidates, all right-padded suffixes in one call; suffix scorer: prefix + first chunk of candidates, the other chunk
over the returned prefix KV with the prefix's last token re-fed). Token embeddings come from PyTorch's table through
the runtime's own Embedder (`OracleEmbedder`), so a decoder's gate measures that graph, not the embed variant's
rounding. Each kind's check is a method of its class (exporter/kinds.py); this module is the harness.

The reference is always the PyTorch fp32 model itself, not our wrappers: decoders are checked against a plain forward of
the language model over each row's *unpadded* sequence (the prompt plus the tokens the runtime picked; the prefix plus
the suffix up to the read slot), so a mistake in the masks, position ids, KV layout or the prefix expansion shows up.
The scorer graph's chained call is checked through its scores and its returned prefix KV (relative error against
PyTorch's KV, reported as `prefix_kv_error`), and random cases read two slots per row, so the last-layer-at-read-slots
shortcut is checked away from the last token too.

Metrics (what is gated):
- `features`: max |onnx - torch| / max |torch| over image features, token embeddings, user embeddings;
- `logits`: the same over decoder logits (summarizer: full vocabulary; recommender: the yes/no pair);
- `score`: max |onnx - torch| of p(yes)/(p(yes)+p(no)) in [0, 1] -- what the recommender ranks by. For the
  recommender's yes/no head only the score is gated (its `logits` figure is reported): a shift common to both logits
  does not change the score.
Relative to the largest reference value, so one tolerance holds for tiny random models (|logits| < 1, features ~0.1)
and trained ones (|logits| ~ 10-30) alike. A graph that computes the wrong function (measured: a graph checked against
another seed's model) scores 1.3-1.8 on features/logits and 0.26 on score, so the gates below sit far from "broken".
Tolerances (DEFAULT_TOLERANCES), set from errors measured on tiny qwen2/llama + clip/siglip models with >= 3x margin:
- fp32: 1e-4 (measured <= 2e-6: anything above is a real bug, not rounding);
- fp16: 1e-2 features, 2e-2 logits, 1e-2 score (11-bit mantissa, ~5e-4 relative per op accumulating over layers;
  measured <= 1e-3);
- int8: 0.1 features, 0.25 logits, 0.05 score (dynamic int8, per-tensor scales: measured 0.025-0.03 features,
  0.03-0.08 logits, 0.003-0.008 score; per-channel weights measured 3-7x worse with ORT 1.32's dynamic quantizer).
The summarizer's int8 decoder is gated on the export's real prompts when it has them (random-prompt figures are
reported as `random_logits` / `random_argmax_agreement`; see kinds.DecoderLastExport); every other variant on random +
real inputs.
Reported but not gated: `argmax_agreement` (summarizer greedy tokens), `rank_agreement` (pairs of candidates ordered
alike), `min_cosine` (user embeddings, what hnswlib sees).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.scores import yes_probability
from ..runtime.llm import Embedder
from .variants import ExportError

DEFAULT_TOLERANCES = {
    "fp32": {"features": 1e-4, "logits": 1e-4, "score": 1e-4},
    "fp16": {"features": 1e-2, "logits": 2e-2, "score": 1e-2},
    "int8": {"features": 0.1, "logits": 0.25, "score": 0.05},
    "int4": {"features": 0.2, "logits": 0.5, "score": 0.1},
}
GATED = ("features", "logits", "score")


@dataclass
class GraphParity:
    graph: str
    precision: str
    metrics: dict[str, float]
    tolerances: dict[str, float]
    cases: int  # random cases
    info: dict[str, float] = field(default_factory=dict)
    real_cases: int = 0  # real inputs (images, prompts, histories) from the dataset
    provider: str = "CPUExecutionProvider"  # the session's first execution provider (what ran the graph)

    @property
    def failures(self) -> list[str]:
        return [f"{k} {v:.3g} > {self.tolerances[k]:.3g}" for k, v in self.metrics.items()
                if k in self.tolerances and not (v <= self.tolerances[k])]  # NaN fails too

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        out = {"precision": self.precision, "passed": self.passed, "cases": self.cases, "real_cases": self.real_cases,
               "metrics": {k: float(v) for k, v in self.metrics.items()},
               "tolerances": {k: self.tolerances[k] for k in self.metrics if k in self.tolerances},
               "info": {k: float(v) for k, v in self.info.items()}}
        if self.provider != "CPUExecutionProvider":  # CPU-gated manifests stay as they were
            out["provider"] = self.provider
        return out


def tolerances(precision: str, overrides=None) -> dict[str, float]:
    tol = dict(DEFAULT_TOLERANCES[precision])
    only = getattr(overrides, "only", "")
    if only and precision not in only.split(","):
        return tol
    for k in GATED:
        v = getattr(overrides, k, 0.0) if overrides is not None else 0.0
        if v:
            tol[k] = float(v)
    return tol


def gate(results: list[GraphParity]) -> None:
    """Raise ExportError naming every graph that missed its tolerances."""
    bad = [f"{r.graph} ({r.precision}): {'; '.join(r.failures)}" for r in results if not r.passed]
    if bad:
        raise ExportError("parity gate failed: " + " | ".join(bad),
                          "the ONNX graph does not compute what the PyTorch model does; nothing was written")


def session(path: Path, precision: str = "fp32", threads: int | None = None, provider: str = "cpu"):
    """A session for one graph variant on `provider` (cpu, or cuda for a GPU profile's `[parity] provider`), opened by
    the runtime's own code with the options it gives that variant. A provider this onnxruntime build lacks is a
    UserError (runtime.sessions.resolve_provider); on cuda the CPU provider stays behind it, as in the runtime."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        from ..core.errors import UserError

        raise UserError("export needs onnxruntime for its parity gates",
                        "pip install 'mmsrarec-edge[cpu]' (or [gpu])") from exc
    from ..runtime.sessions import SessionConfig, open_session, resolve_provider

    cfg = SessionConfig(resolve_provider(provider), threads=threads or max(1, torch.get_num_threads()))
    return open_session(Path(path), cfg, variant=precision)


class Metrics:
    """Running max of scaled differences, per metric name."""

    def __init__(self):
        self.metrics: dict[str, float] = {}

    def add(self, key: str, got, ref, scaled: bool = True):
        got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
        d = float(np.abs(got - ref).max()) if got.size else 0.0
        if not np.isfinite(got).all():
            d = float("nan")
        if scaled and ref.size:
            d /= max(float(np.abs(ref).max()), 1e-12)
        prev = self.metrics.get(key, 0.0)
        self.metrics[key] = d if (np.isnan(d) or np.isnan(prev)) else max(prev, d)


@dataclass
class ParityRun:
    """One graph variant's check: the PyTorch oracle, the runtime object over the exported graph, the cases."""

    model: object  # LLaVA, or the SASRec net
    runtime: object  # the kind's runtime object (ExportKind.runtime) over the ONNX Runtime session
    precision: str
    cases: int  # random cases
    seed: int
    rng: np.random.Generator
    real: object = None  # real inputs from the dataset (exporter/inputs.real_parity_inputs)
    yes_no_ids: tuple[int, int] | None = None


class OracleEmbedder(Embedder):
    """The runtime's Embedder (padding, image-slot splicing) over PyTorch's embedding table instead of the embed graph:
    the decoders' gates feed exact fp32 embeddings, as the graphs' own I/O contract has them. No image token: real
    prompts' image slots keep the token's own embedding."""

    def __init__(self, llava):
        self.sess, self.image_token_id = None, None
        self.table = llava.get_input_embeddings()
        self.hidden = int(self.table.weight.shape[1])

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape[-1] == 0:
            return np.zeros((*ids.shape, self.hidden), np.float32)
        with torch.no_grad():
            return self.table(torch.from_numpy(ids)).numpy()


def rope(model):
    """The runtime's multimodal position scheme for this model (core/rope_index.MRope), None for 1-D positions."""
    from ..models import families

    return families.rope(model)


def oracle_positions(llava, ids, length: int | None = None) -> torch.Tensor | None:
    """transformers' own position ids [3, 1, length] for a multimodal-rope model (None otherwise): get_rope_index
    over `ids`; slots past them (tokens a greedy loop picked) continue from its largest + 1, as generate does."""
    from ..models import families

    pos = families.position_ids(llava, ids)
    if pos is None:
        return None
    length = len(ids) if length is None else length
    if length > pos.shape[-1]:
        more = torch.arange(length - pos.shape[-1]) + pos.max() + 1
        pos = torch.cat([pos, more.view(1, 1, -1).expand(3, 1, -1)], dim=-1)
    return pos[:, :, :length]


def oracle_hidden(llava, embeds: torch.Tensor, ids=None) -> torch.Tensor:
    """Last hidden state at the final position of one unpadded sequence [T, H] -> [H]. `ids`: the token ids of the
    sequence (or of a longer one it starts): a multimodal-rope model's positions come from them."""
    from ..models.families import language_model

    pos = oracle_positions(llava, ids, embeds.shape[0]) if ids is not None else None
    out = language_model(llava)(inputs_embeds=embeds[None], position_ids=pos, use_cache=False)
    return out.last_hidden_state[0, -1]


def with_images(llava, rng, prompts: list[list[int]]) -> list[list[int]]:
    """Multimodal-rope models: every other prompt gets an image (vision start, the image tokens, vision end) at a
    random place, so the gate covers image positions; other models' prompts are returned as they are (no draw)."""
    r = rope(llava)
    if r is None:
        return prompts
    end = getattr(llava.config, "vision_end_token_id", r.vision_start_token_id)
    out = []
    for k, p in enumerate(prompts):
        if k % 2 == 0:
            at = int(rng.integers(0, len(p) + 1))
            p = p[:at] + [r.vision_start_token_id] + [r.image_token_id] * r.image_tokens + [end] + p[at:]
        out.append(list(p))
    return out


def embed(llava, ids) -> torch.Tensor:
    return llava.get_input_embeddings()(torch.as_tensor(ids, dtype=torch.long))


def vocab_size(llava) -> int:
    return int(llava.get_input_embeddings().weight.shape[0])


def random_prompts(rng, vocab: int, rows: int, lo: int, hi: int) -> list[list[int]]:
    return [rng.integers(1000, vocab - 1, size=int(rng.integers(lo, hi + 1))).tolist() for _ in range(rows)]


def candidate_cases(rng, vocab: int, cases: int, real, model=None) -> list[tuple[list[int], list[list[int]]]]:
    """`cases` random (prefix, suffixes) cases, then the real ones: the recommender graphs' parity inputs. With a
    multimodal-rope `model`, the prefix and every other suffix carry an image (`with_images`)."""
    out = []
    for c in range(cases):
        prefix = random_prompts(rng, vocab, 1, 8 + 8 * c, 24 + 8 * c)
        suffixes = random_prompts(rng, vocab, 3 + 2 * c, 2, 9)
        if model is not None:
            prefix, suffixes = with_images(model, rng, prefix), with_images(model, rng, suffixes)
        out.append((prefix[0], suffixes))
    return out + [(list(p), [list(s) for s in sx]) for p, sx in (real or [])]


def same_order_pairs(got: np.ndarray, ref: np.ndarray) -> tuple[int, int]:
    """(candidate pairs ordered alike by both score vectors, pairs)."""
    i, j = np.triu_indices(len(got), 1)
    return int((np.sign(got[i] - got[j]) == np.sign(ref[i] - ref[j])).sum()), len(i)


def score(yes_no) -> np.ndarray:
    yes_no = np.asarray(yes_no)
    return yes_probability(yes_no[..., 0], yes_no[..., 1])


def check(graph: str, kind, path: Path, precision: str, torch_obj, *, cases: int = 3, seed: int = 0,
          tol_overrides=None, yes_no_ids=None, real=None, threads: int | None = None,
          provider: str = "cpu") -> GraphParity:
    """Run the parity check of one exported graph file. `kind`: a registered kind name (vision, embed, decoder_last,
    decoder_yes_no, decoder_scorer, user_encoder, ...) or an ExportKind (exporter/kinds.py), whose class runs it."""
    from .kinds import export_kind

    k = export_kind(kind, graph, torch_obj) if isinstance(kind, str) else kind
    sess = session(path, precision, threads, provider)
    run = ParityRun(torch_obj, k.runtime(sess), precision, cases, seed, np.random.default_rng(seed), real, yes_no_ids)
    with torch.no_grad():
        acc, info = k.parity(run)
    real_cases = len(real) if real is not None else 0
    return GraphParity(graph, precision, acc.metrics, k.tolerances(precision, tol_overrides), cases, info, real_cases,
                       sess.get_providers()[0])

"""The exporter's side of each graph kind: PyTorch wrapper, dummy inputs, runtime object and parity check.

Each class here subclasses its kind's torch-free class in core/graph_kinds.py (names, dynamic axes, TensorRT ranges,
batch limits, Triton shapes: what serving reads without the exporter) and adds what needs torch:
- `source(inputs)`: the PyTorch object a graph is exported from (its stage's LLaVA, the SASRec net);
- `supports(model)`: None, or why this class cannot export that model (a decoder family it does not cover); a graph
  of an `optional` kind (the scorer) is then skipped with the reason (manifest `graphs_skipped`), others refused;
- `module(model, yes_no_ids)` and `example(model)`, which `spec` joins with the core names into a GraphSpec;
- `runtime(session)`: the shipped runtime object over the exported graph (runtime/llm.py);
- `parity(run)`: the check against the PyTorch oracle through that runtime object and the runtime's own scoring and
  generation code (exporter/parity.py describes the gate), with `tolerances(precision, overrides)`;
- `real_inputs(real_prompts)`: the export's real parity inputs for the graph.

Registry: `EXPORT_KINDS` maps a kind name to its classes, newest first, and `export_kind(kind, graph, model)` binds the
first whose `supports(model)` is None. A decoder family that differs is one subclass registered after its kind's class
(it wins for the models its `supports` accepts); a new kind is a class in core/graph_kinds.py plus one here. The bundle
writer, the parity gate and the TensorRT profiles go through these classes, the Triton repository through their core
parts: none of them dispatches on kind names.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..core import graph_kinds as core
from ..core.errors import UserError
from ..core.summary_prompts import PromptSpec
from ..models.families import language_model
from ..runtime.llm import Decoder, Embedder, ImageEncoder, SuffixScorer, UserEncoder
from ..runtime.scorer import CandidateScorer
from ..runtime.summarizer import greedy_steps
from . import parity as P
from . import suffix_graph
from .graphs import DecoderGraph, EmbedGraph, GraphSpec, UserEncoderGraph, VisionGraph, kv_shape

EXPORT_KINDS: dict[str, list[type[ExportKind]]] = {}


class UnsupportedModel(UserError):
    """No registered class of a kind can export this model; `reason` says why (the base class's words)."""

    def __init__(self, graph: str, reason: str):
        super().__init__(f"cannot export {graph}: {reason}", "drop the graph from the profile's `graphs`")
        self.reason = reason


def register(cls: type[ExportKind]) -> type[ExportKind]:
    """Class decorator: add `cls` as the newest class of kind `cls.name`, which must subclass that kind's core class
    (so serving, which never imports the exporter, knows the kind too)."""
    base = core.GRAPH_KINDS.get(cls.name)
    if base is None or not issubclass(cls, base) or not issubclass(cls, ExportKind):
        raise TypeError(f"{cls.__name__} must subclass ExportKind and the core class of kind {cls.name!r} "
                        "(core/graph_kinds.py, registered there first)")
    EXPORT_KINDS.setdefault(cls.name, []).insert(0, cls)
    return cls


def _classes(kind: str) -> list[type[ExportKind]]:
    classes = EXPORT_KINDS.get(kind)
    if not classes:
        raise ValueError(f"unknown graph kind {kind!r} (known: {', '.join(EXPORT_KINDS)})")
    return classes


def export_kind(kind: str, graph: str, model) -> ExportKind:
    """The newest registered class of `kind` that supports `model`, bound to `graph`; UnsupportedModel if none does."""
    classes = _classes(kind)
    for cls in classes:
        if cls.supports(model) is None:
            return cls(graph)
    raise UnsupportedModel(graph, classes[-1].supports(model) or "no registered class supports this model")


def plan_graph(graph: str, inputs) -> tuple[ExportKind | None, object, str | None]:
    """(kind bound to `graph`, the PyTorch object it is exported from, None), or (None, object, why) for a graph of an
    optional kind that the model cannot have. `inputs`: bundle.ExportInputs."""
    classes = _classes(core.kind_of(graph))
    model = classes[-1](graph).source(inputs)
    try:
        return export_kind(classes[-1].name, graph, model), model, None
    except UnsupportedModel as exc:
        if classes[-1].optional:  # an optimisation only: the runtime has another path
            return None, model, exc.reason
        raise


class ExportKind(core.GraphKind):
    """The torch side of a graph kind (module docstring). Subclasses list their core class first, so its torch-free
    definitions are the ones both sides use."""

    optional: ClassVar[bool] = False
    gated_on_score: ClassVar[bool] = False  # yes/no heads: the score is gated, their logits reported only
    real_inputs_from: ClassVar[str | None] = None  # the graph whose real parity inputs this one is checked on

    @classmethod
    def supports(cls, model) -> str | None:
        return None

    def source(self, inputs):
        stage = getattr(inputs, self.stage, None)
        if stage is None:
            raise UserError(f"profile asks for graph {self.graph} but no {self.stage} model was given",
                            f"pass --{self.stage} DIR, or drop the graph from the profile's `graphs`")
        return stage.model

    def layers(self, model) -> int:
        """Decoder layers (KV tensors in `io`); 1 for kinds without a KV cache."""
        return 1

    def module(self, model, yes_no_ids: tuple[int, int] | None = None) -> nn.Module:
        raise NotImplementedError

    def example(self, model) -> tuple:
        raise NotImplementedError

    def spec(self, model, yes_no_ids: tuple[int, int] | None = None) -> GraphSpec:
        io = self.io(self.layers(model))
        return GraphSpec(self.graph, self.module(model, yes_no_ids).eval(), list(io.inputs), list(io.outputs),
                         {n: dict(a) for n, a in io.dynamic_axes.items()}, self.example(model))

    def runtime(self, session):
        raise NotImplementedError

    def parity(self, run: P.ParityRun) -> tuple[P.Metrics, dict]:
        raise NotImplementedError

    def tolerances(self, precision: str, overrides=None) -> dict[str, float]:
        tol = P.tolerances(precision, overrides)
        if self.gated_on_score and not getattr(overrides, "logits", 0.0):  # a profile's explicit logits value holds
            # The score is sigmoid(l_yes - l_no): a shift common to both logits cancels, so the score gate is the
            # meaningful one and the relative logit error is reported only (measured on the demo's trained
            # recommender: int8 logits 0.39 relative while the score moved 0.049).
            tol.pop("logits", None)
        return tol

    def real_inputs(self, real_prompts: dict):
        return real_prompts.get(self.graph, real_prompts.get(self.real_inputs_from))


@register
class VisionExport(core.VisionKind, ExportKind):
    def module(self, model, yes_no_ids=None) -> nn.Module:
        return VisionGraph(model)

    def example(self, model) -> tuple:
        s = int(model.config.vision_config.image_size)
        return (torch.zeros(2, 3, s, s),)  # two example images keep the image count dynamic in the traced graph

    def runtime(self, session):
        return ImageEncoder(session)

    def parity(self, run):
        ref_mod, acc, s = VisionGraph(run.model).eval(), P.Metrics(), int(run.model.config.vision_config.image_size)
        batches = [run.rng.standard_normal((1 + c % 3, 3, s, s)).astype(np.float32) for c in range(run.cases)]
        if run.real is not None and len(run.real):
            batches.append(np.asarray(run.real, np.float32))
        for px in batches:
            acc.add("features", run.runtime(px), ref_mod(torch.from_numpy(px)).numpy())
        return acc, {}


@register
class EmbedExport(core.EmbedKind, ExportKind):
    def module(self, model, yes_no_ids=None) -> nn.Module:
        return EmbedGraph(model)

    def example(self, model) -> tuple:
        return (torch.ones(2, 5, dtype=torch.long),)

    def runtime(self, session):
        return Embedder(session)

    def parity(self, run):
        acc = P.Metrics()
        batches = [run.rng.integers(0, P.vocab_size(run.model), size=(2, 3 + 7 * c)) for c in range(run.cases)]
        for ids in run.real or []:
            batches.append(np.asarray([ids], np.int64))
        for ids in batches:
            ids = ids.astype(np.int64)
            acc.add("features", run.runtime(ids), P.embed(run.model, ids).numpy())
        return acc, {}


class MergedDecoderExport(ExportKind):
    """The merged decoder's torch side (graphs.DecoderGraph); the head comes from the core class."""

    def layers(self, model) -> int:
        return kv_shape(model)[0]

    def module(self, model, yes_no_ids=None) -> nn.Module:
        return DecoderGraph(model, self.head, yes_no_ids)

    def example(self, model) -> tuple:
        layers, kv_heads, head_dim = kv_shape(model)
        hidden = model.config.text_config.hidden_size
        B, q, past = 2, 3, 4
        example = [torch.zeros(B, q, hidden), torch.ones(B, past + q, dtype=torch.long),
                   torch.arange(past, past + q).repeat(B, 1)]
        example += [torch.zeros(B, kv_heads, past, head_dim) for _ in range(2 * layers)]
        return (*example, *self.head_example(B, q))

    def head_example(self, batch: int, q: int) -> tuple:
        return ()

    def runtime(self, session):
        return Decoder(session)


# The gate's prompt spec for the greedy loop: eos -1 is never picked, so every row runs every step and all its
# logits are compared; token 0 (pad) is the one suppressed. GATE_STEPS: the prefill's logits, then one decode step.
GATE_SPEC = PromptSpec(eos_id=-1, pad_id=0, image_token_id=0, num_image_tokens=0)
GATE_STEPS = 2


@register
class DecoderLastExport(core.DecoderLastKind, MergedDecoderExport):
    def parity(self, run):
        if run.precision in ("int8", "int4") and run.real:
            # A trained generator's int8 variant is gated on the prompts it will see: on random token sequences a
            # trained model's activations leave the range its per-tensor scales fit (measured on the ml100k_mm
            # summarizer: logits 0.37 relative on random prompts, 0.027 with greedy tokens all equal on its real
            # prompts). The structure is already gated by the fp32 variant on random prompts; their int8 figures are
            # reported.
            acc, info = self._generate(run, np.random.default_rng([run.seed, 1]), 0, run.real)  # own stream
            if run.cases:
                rnd, rnd_info = self._generate(run, run.rng, run.cases, None)
                info = {**info, "random_logits": rnd.metrics.get("logits", 0.0),
                        "random_argmax_agreement": rnd_info["argmax_agreement"]}
            return acc, info
        return self._generate(run, run.rng, run.cases, run.real)

    @staticmethod
    def _generate(run, rng, cases: int, real) -> tuple[P.Metrics, dict]:
        """Left-padded prompt batches through the runtime's greedy loop for GATE_STEPS tokens; each step's logits
        against PyTorch over each row's prompt plus the tokens the loop picked before it."""
        llava, acc = run.model, P.Metrics()
        batches = [P.with_images(llava, rng, P.random_prompts(rng, P.vocab_size(llava), 2 + c % 2, 3, 12 + 10 * c))
                   for c in range(cases)]
        if real:
            batches.append([list(p) for p in real])
        embedder, rope = P.OracleEmbedder(llava), P.rope(llava)
        agree = total = 0
        for prompts in batches:
            picked: list[list[int]] = [[] for _ in prompts]
            for step in greedy_steps(run.runtime, embedder, prompts, GATE_SPEC, GATE_STEPS, rope=rope):
                rows = np.flatnonzero(step.live)
                got = step.logits[rows]
                ref = torch.stack([llava.lm_head(P.oracle_hidden(llava, P.embed(llava, prompts[r] + picked[r]),
                                                                 prompts[r]))
                                   for r in rows]).numpy()
                acc.add("logits", got, ref)
                agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
                total += len(rows)
                for r in rows:
                    picked[r].append(int(step.tokens[r]))
        return acc, {"argmax_agreement": agree / total if total else 1.0}


def _answer_rows(run) -> torch.Tensor:
    return run.model.lm_head.weight[list(run.yes_no_ids)]


@register
class DecoderYesNoExport(core.DecoderYesNoKind, MergedDecoderExport):
    gated_on_score = True

    def head_example(self, batch: int, q: int) -> tuple:
        return (torch.full((batch, 1), q - 1, dtype=torch.long),)

    def parity(self, run):
        """The runtime's expanded-KV path (CandidateScorer without the scorer graph): the prefix at batch 1, its KV
        broadcast to the candidates, a case's right-padded suffixes in one call."""
        llava, acc, rows = run.model, P.Metrics(), _answer_rows(run)
        cases = P.candidate_cases(run.rng, P.vocab_size(llava), run.cases, run.real, llava)
        scorer = CandidateScorer(run.runtime, P.OracleEmbedder(llava), pad_id=0,
                                 max_batch=max([len(sx) for _, sx in cases], default=1), rope=P.rope(llava))
        same = pairs = 0
        for prefix, suffixes in cases:
            out = scorer.candidate_logits(prefix, suffixes)
            if out.prefix.logits is not None:  # the prefill's own read slot
                acc.add("logits", out.prefix.logits,
                        (rows @ P.oracle_hidden(llava, P.embed(llava, prefix), prefix)).numpy())
            got = out.logits[:, 0, :]
            ref = torch.stack([rows @ P.oracle_hidden(llava, P.embed(llava, prefix + s), prefix + s)
                               for s in suffixes]).numpy()
            acc.add("logits", got, ref)
            sg, sr = P.score(got), P.score(ref)
            acc.add("score", sg, sr, scaled=False)
            a, n = P.same_order_pairs(sg, sr)
            same, pairs = same + a, pairs + n
        return acc, {"rank_agreement": same / pairs if pairs else 1.0}


@register
class DecoderScorerExport(core.DecoderScorerKind, ExportKind):
    optional = True  # an optimisation only: without it the runtime scores with the merged decoder
    gated_on_score = True
    real_inputs_from = "recommender.decoder"

    @classmethod
    def supports(cls, model) -> str | None:
        return suffix_graph.supports(model)

    def layers(self, model) -> int:
        return kv_shape(model)[0]

    def module(self, model, yes_no_ids=None) -> nn.Module:
        return suffix_graph.SuffixScorerGraph(model, yes_no_ids)

    def example(self, model) -> tuple:
        layers, kv_heads, head_dim = kv_shape(model)
        hidden = model.config.text_config.hidden_size
        C, S, Pn, P0 = 3, 4, 5, 2
        return (torch.zeros(C, S, hidden), torch.ones(C, S, dtype=torch.long), torch.full((C, 1), S - 1),
                torch.zeros(1, Pn, hidden), *[torch.zeros(1, kv_heads, P0, head_dim) for _ in range(2 * layers)])

    def runtime(self, session):
        return SuffixScorer(session)

    def parity(self, run):
        """The runtime's suffix-scorer path (CandidateScorer over this graph) in two chunks per case: the prefix with
        the first chunk, the second chunk over the returned prefix KV (checked against PyTorch's, reported: a wrong KV
        shows in the second chunk's gated scores). Random cases read two slots per row (the last and a middle one)."""
        llava, acc, kv_acc, rows = run.model, P.Metrics(), P.Metrics(), _answer_rows(run)
        embedder = P.OracleEmbedder(llava)
        past_names = core.kv_names(self.layers(llava), "past_key_values")
        same = pairs = 0
        for n_case, (prefix, suffixes) in enumerate(P.candidate_cases(run.rng, P.vocab_size(llava), run.cases,
                                                                      run.real, llava)):
            K = 2 if n_case < run.cases else 1  # random cases: two read slots per row
            slots = [[len(s) - 1, (len(s) - 1) // 2][:K] for s in suffixes]
            C = len(suffixes)
            split = [c for c in (max(1, C // 2), C - max(1, C // 2)) if c]  # the prefix with C // 2, then the rest
            scorer = CandidateScorer(None, embedder, pad_id=0, max_batch=max(split), suffix_scorer=run.runtime,
                                     rope=P.rope(llava))
            out = scorer.candidate_logits(prefix, suffixes, slots=slots, chunks=split)
            got = out.logits
            ref = np.stack([torch.stack([rows @ P.oracle_hidden(llava, P.embed(llava, prefix + s[:j + 1]), prefix + s)
                                         for j in idx]).numpy() for s, idx in zip(suffixes, slots)])
            if out.prefix is not None:  # the first call's prefix KV, which the second chunk ran over
                cache = language_model(llava)(inputs_embeds=P.embed(llava, [prefix]), use_cache=True,
                                                   position_ids=P.oracle_positions(llava, prefix))
                ref_kv = [t.numpy() for layer in cache.past_key_values.layers for t in (layer.keys, layer.values)]
                kv_acc.add("kv", np.concatenate([out.prefix.past[n].ravel() for n in past_names]),
                           np.concatenate([r.ravel() for r in ref_kv]))
            acc.add("logits", got, ref)
            acc.add("score", P.score(got), P.score(ref), scaled=False)
            a, n = P.same_order_pairs(P.score(got[:, 0]), P.score(ref[:, 0]))
            same, pairs = same + a, pairs + n
        return acc, {"rank_agreement": same / pairs if pairs else 1.0,
                     "prefix_kv_error": kv_acc.metrics.get("kv", 0.0)}


@register
class UserEncoderExport(core.UserEncoderKind, ExportKind):
    def source(self, inputs):
        if inputs.sasrec is None:
            raise UserError(f"profile asks for graph {self.graph} but no SASRec model was given",
                            "pass --sasrec DIR, or drop the graph from the profile's `graphs`")
        return inputs.sasrec.net

    def module(self, model, yes_no_ids=None) -> nn.Module:
        return UserEncoderGraph(model)

    def example(self, model) -> tuple:
        example = torch.zeros(2, model.cfg.max_len, dtype=torch.long)
        example[:, -3:] = 1
        return (example,)

    def runtime(self, session):
        return UserEncoder(session)

    def parity(self, run):
        net, acc = run.model, P.Metrics()
        L, n_items = net.cfg.max_len, net.n_items
        batches = []
        for _ in range(run.cases):
            hist = np.zeros((6, L), np.int64)
            for r in range(6):
                n = int(run.rng.integers(1, L + 1)) if r else L  # one full row, others partly padded
                hist[r, L - n:] = run.rng.integers(1, n_items + 1, size=n)
            batches.append(hist)
        if run.real is not None and len(run.real):
            batches.append(np.asarray(run.real, np.int64))
        min_cos = 1.0
        for hist in batches:
            got = run.runtime(hist)
            ref = net.user_embedding(torch.from_numpy(hist)).numpy()
            acc.add("features", got, ref)
            cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-12)
            min_cos = min(min_cos, float(cos.min()))
        return acc, {"min_cosine": min_cos}


# Decoder families registered after the base classes (newest wins for the models they support).
from . import idefics3, internvl, qwen_vl  # noqa: E402,F401

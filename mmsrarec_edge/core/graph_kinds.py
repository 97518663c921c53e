"""Graph kinds, torch-free: one class per kind of bundle graph, holding what the exporter, TensorRT and serving know.

Every graph of a bundle has a kind (manifest `graphs.<name>.kind`): vision, embed, decoder_last, decoder_yes_no,
decoder_scorer, user_encoder (their I/O contracts: exporter/__init__.py). A kind's class here holds its torch-free part:
- `graphs`: the bundle graphs of this kind (`kind_of(graph)` reads them);
- `io(layers)`: input/output names and their named dynamic axes, as the exporter names the ONNX graph;
- `dim_ranges(limits)`: TensorRT optimization profiles, {min, opt, max} per dynamic dim name, from the export profile's
  [limits]; `tensorrt_profiles(inputs, limits)` applies them to a graph's inputs (written into the manifest);
- `batch_limit` / `max_batch(limits)`: which limit bounds the batch axis, and `triton_io(entry)`: Triton's tensors
  (the batch axis, `batch_dim`, taken out when every input and output starts with it).
The exporter subclasses each class (exporter/kinds.py) with the torch side: the PyTorch wrapper, dummy inputs, the
runtime object over the exported graph and the parity check. Serving reads the classes here through the kind the
manifest names, without the exporter (the import-linter contracts keep it so). A new kind is a class here registered
with `register` plus its exporter subclass; a decoder family that differs is an exporter subclass alone.

TensorRT profiles: a graph whose use has two regimes gets two profiles:
- recommender.decoder (decoder_yes_no): `prefix` (batch 1, the shared prefix, past 0) and `suffix` (batch =
  candidates, the candidate part, past = the prefix);
- summarizer.decoder (decoder_last): `prefill` (the prompt, past 0) and `decode` (one token, past up to prompt + new
  tokens);
- recommender.scorer (decoder_scorer): `first` (prefix tokens, past 0, a chunk of candidates) and `next` (one re-fed
  prefix token over the returned prefix KV, the next chunk); its prefix inputs keep batch 1;
- recommender.embed: `prefix` and `suffix` likewise; the others have one.
opt = the largest batch (the runtime scores every candidate in one call) and half the largest length.
Dims: `batch`, `sequence` (q), `past_sequence`, `total_sequence` (= past + q), `positions` (K logits per row, 1),
`images`, `prefix_sequence`. Fixed dims (hidden size, heads, image size) come from the graph's own input shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

GRAPH_KINDS: dict[str, type[GraphKind]] = {}


def register(cls: type[GraphKind]) -> type[GraphKind]:
    """Class decorator: `cls` becomes the description of kind `cls.name` (a later class of that name replaces it)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no kind name")
    GRAPH_KINDS[cls.name] = cls
    return cls


def kind_of(graph: str) -> str:
    """The kind of a bundle graph ("recommender.decoder" -> "decoder_yes_no")."""
    for name, cls in GRAPH_KINDS.items():
        if graph in cls.graphs:
            return name
    raise ValueError(f"no graph kind covers graph {graph!r} (known graphs: {', '.join(known_graphs())})")


def known_graphs() -> list[str]:
    return [g for cls in GRAPH_KINDS.values() for g in cls.graphs]


def graph_kind(kind: str, graph: str) -> GraphKind:
    """The registered class of `kind`, bound to one graph."""
    cls = GRAPH_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown graph kind {kind!r} (known: {', '.join(GRAPH_KINDS)})")
    return cls(graph)


def kv_names(num_layers: int, prefix: str) -> list[str]:
    """Flat KV tensor names in graph order: {prefix}.{i}.key, {prefix}.{i}.value for each layer i."""
    return [f"{prefix}.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def _limits(limits) -> dict:
    return dict(limits) if isinstance(limits, dict) else dict(limits.__dict__)


def _rng(lo: int, opt: int, hi: int) -> dict:
    return {"min": int(lo), "opt": int(opt), "max": int(hi)}


def _half(n: int) -> int:
    return max(1, n // 2)


def _one() -> dict:
    return _rng(1, 1, 1)


def _empty() -> dict:
    return _rng(0, 0, 0)


@dataclass(frozen=True)
class GraphIO:
    """Input and output names in graph order, and the named dynamic axes ({tensor: {axis: dim name}})."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]

    @property
    def batch_dim(self) -> str | None:
        """The dim name every input and output has as axis 0, or None (then Triton gets no batch axis)."""
        firsts = {self.dynamic_axes.get(n, {}).get(0) for n in (*self.inputs, *self.outputs)}
        return next(iter(firsts)) if len(firsts) == 1 else None


@dataclass(frozen=True)
class TritonIO:
    """A graph's tensors as its Triton config declares them: (name, numpy dtype name, dims with -1 for dynamic dims,
    without the batch axis when `batched`)."""

    batched: bool
    inputs: list[tuple[str, str, list[int]]]
    outputs: list[tuple[str, str, list[int]]]


def shared_batch_axis(entry: dict) -> str | None:
    """The symbolic axis every input and output of a manifest graph entry starts with, or None."""
    firsts = {t["shape"][0] if t["shape"] else None for t in [*entry["inputs"], *entry["outputs"]]}
    first = next(iter(firsts)) if len(firsts) == 1 else None
    return first if isinstance(first, str) else None


def triton_io(entry: dict, batch_dim: str | None) -> TritonIO:
    """Triton's tensors of a manifest graph entry, batched along `batch_dim` when every tensor starts with it."""
    batched = batch_dim is not None and shared_batch_axis(entry) == batch_dim

    def dims(shape) -> list[int]:
        out = [d if isinstance(d, int) else -1 for d in shape]
        return out[1:] if batched else out

    return TritonIO(batched, [(t["name"], t["dtype"], dims(t["shape"])) for t in entry["inputs"]],
                    [(t["name"], t["dtype"], dims(t["shape"])) for t in entry["outputs"]])


class GraphKind:
    """One kind of bundle graph, bound to one graph name (the module docstring lists what a kind holds)."""

    name: ClassVar[str] = ""
    graphs: ClassVar[tuple[str, ...]] = ()
    batch_limit: ClassVar[str | None] = None  # the [limits] key bounding the batch axis

    def __init__(self, graph: str):
        self.graph = graph
        self.stage = graph.split(".")[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.graph!r})"

    def io(self, layers: int = 1) -> GraphIO:
        """Names and dynamic axes; `layers`: the decoder's layer count (KV tensors), ignored by other kinds."""
        raise NotImplementedError

    def dim_ranges(self, limits) -> list[tuple[str, dict[str, dict]]]:
        """(profile name, {dim name: {min, opt, max}}) per TensorRT profile, from Limits (a dataclass or a dict)."""
        raise NotImplementedError

    @property
    def batch_dim(self) -> str | None:
        return self.io().batch_dim

    def max_batch(self, limits) -> int:
        """The bundle's bound on the batch axis (0 when no limit bounds it)."""
        return int(_limits(limits).get(self.batch_limit, 0) or 0) if self.batch_limit else 0

    def triton_io(self, entry: dict) -> TritonIO:
        """Triton's view of this graph's manifest entry (inputs/outputs with dtype and shape)."""
        return triton_io(entry, self.batch_dim)

    def tensorrt_profiles(self, inputs: list[dict], limits) -> list[dict]:
        """TensorRT optimization profiles [{"name", "shapes": {input: {"min": dims, "opt": dims, "max": dims}}}].

        `inputs`: the graph's inputs as in the manifest ([{"name", "shape": [int | dim name]}]). A symbolic dim with
        no range is an error: a profile that silently fixed it would reject real inputs at run time.
        """
        out = []
        for name, ranges in self.dim_ranges(limits):
            shapes = {}
            for inp in inputs:
                dims = {"min": [], "opt": [], "max": []}
                for d in inp["shape"]:
                    if not isinstance(d, int) and d not in ranges:
                        raise ValueError(f"{self.graph}: input {inp['name']} has dim {d!r} with no TensorRT range")
                    for k in dims:
                        dims[k].append(d if isinstance(d, int) else ranges[d][k])
                shapes[inp["name"]] = dims
            out.append({"name": name, "shapes": shapes})
        return out


@register
class VisionKind(GraphKind):
    """pixel_values [images, 3, S, S] -> image_features [images, n_image_tokens, H]."""

    name = "vision"
    graphs = ("summarizer.vision", "recommender.vision")
    batch_limit = "images_batch"

    def io(self, layers: int = 1) -> GraphIO:
        return GraphIO(("pixel_values",), ("image_features",),
                       {"pixel_values": {0: "images"}, "image_features": {0: "images"}})

    def dim_ranges(self, limits):
        return [("images", {"images": _rng(1, 1, _limits(limits)["images_batch"])})]


@register
class EmbedKind(GraphKind):
    """input_ids [batch, sequence] -> inputs_embeds [batch, sequence, H]. Sized by its stage's use: the recommender's
    embeds the shared prefix (batch 1) and the candidates (batch max_candidates), the summarizer's a prompt batch."""

    name = "embed"
    graphs = ("summarizer.embed", "recommender.embed")

    @property
    def batch_limit(self) -> str:
        return "max_candidates" if self.stage == "recommender" else "summarizer_batch"

    def io(self, layers: int = 1) -> GraphIO:
        return GraphIO(("input_ids",), ("inputs_embeds",),
                       {"input_ids": {0: "batch", 1: "sequence"}, "inputs_embeds": {0: "batch", 1: "sequence"}})

    def dim_ranges(self, limits):
        L = _limits(limits)
        if self.stage == "recommender":
            C, pre, suf = L["max_candidates"], L["max_prefix_tokens"], L["max_suffix_tokens"]
            return [("prefix", {"batch": _one(), "sequence": _rng(1, _half(pre), pre)}),
                    ("suffix", {"batch": _rng(1, C, C), "sequence": _rng(1, _half(suf), suf)})]
        Bs, prompt = L["summarizer_batch"], L["max_prompt_tokens"]
        return [("prompt", {"batch": _rng(1, Bs, Bs), "sequence": _rng(1, _half(prompt), prompt)})]


class MergedDecoderKind(GraphKind):
    """The merged decoder (graphs.py): inputs_embeds, attention_mask [batch, total_sequence], position_ids, the past
    KV [batch, kv_heads, past_sequence, head_dim] and the head's own inputs -> the head output and the present KV.
    Subclasses name the head (`head`, `head_output`, `head_inputs`, `head_axes`) and its two TensorRT regimes."""

    head: ClassVar[str] = ""
    head_output: ClassVar[str] = ""
    head_inputs: ClassVar[tuple[str, ...]] = ()
    head_axes: ClassVar[dict[str, dict[int, str]]] = {}

    def io(self, layers: int = 1) -> GraphIO:
        past, present = kv_names(layers, "past_key_values"), kv_names(layers, "present")
        axes = {"inputs_embeds": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
                "position_ids": {0: "batch", 1: "sequence"}}
        axes.update({n: {0: "batch", 2: "past_sequence"} for n in past})
        axes.update({n: {0: "batch", 2: "total_sequence"} for n in present})
        axes.update({n: dict(a) for n, a in self.head_axes.items()})
        return GraphIO(("inputs_embeds", "attention_mask", "position_ids", *past, *self.head_inputs),
                       (self.head_output, *present), axes)

    def regimes(self, L: dict) -> list[tuple[str, dict[str, dict]]]:
        """The profiles' ranges of every dim but total_sequence (past + sequence, added by dim_ranges)."""
        raise NotImplementedError

    def dim_ranges(self, limits):
        profs = self.regimes(_limits(limits))
        for _, d in profs:
            d["total_sequence"] = {k: d["past_sequence"][k] + d["sequence"][k] for k in ("min", "opt", "max")}
        return profs


@register
class DecoderLastKind(MergedDecoderKind):
    """The summarizer's decoder: full-vocabulary logits [batch, vocab] at the last slot (prompts are left-padded)."""

    name = "decoder_last"
    graphs = ("summarizer.decoder",)
    batch_limit = "summarizer_batch"
    head, head_output = "last", "logits"
    head_axes = {"logits": {0: "batch"}}

    def regimes(self, L):
        Bs, prompt, new = L["summarizer_batch"], L["max_prompt_tokens"], L["max_new_tokens"]
        return [("prefill", {"batch": _rng(1, Bs, Bs), "sequence": _rng(1, _half(prompt), prompt),
                             "past_sequence": _empty()}),
                ("decode", {"batch": _rng(1, Bs, Bs), "sequence": _one(),
                            "past_sequence": _rng(1, _half(prompt + new), prompt + new - 1)})]


@register
class DecoderYesNoKind(MergedDecoderKind):
    """The recommender's decoder: yes_no_logits [batch, positions, 2] read at logits_index [batch, positions]."""

    name = "decoder_yes_no"
    graphs = ("recommender.decoder",)
    batch_limit = "max_candidates"
    head, head_output = "yes_no", "yes_no_logits"
    head_inputs = ("logits_index",)
    head_axes = {"logits_index": {0: "batch", 1: "positions"}, "yes_no_logits": {0: "batch", 1: "positions"}}

    def regimes(self, L):
        C, pre, suf = L["max_candidates"], L["max_prefix_tokens"], L["max_suffix_tokens"]
        return [("prefix", {"batch": _one(), "sequence": _rng(1, _half(pre), pre), "past_sequence": _empty(),
                            "positions": _one()}),
                ("suffix", {"batch": _rng(1, C, C), "sequence": _rng(1, _half(suf), suf),
                            "past_sequence": _rng(1, _half(pre), pre), "positions": _one()})]


@register
class DecoderScorerKind(GraphKind):
    """The recommender's candidate scorer (exporter/suffix_graph.py): candidate suffixes [batch, sequence, H], the
    prefix tokens not yet in the KV [1, prefix_sequence, H] and the batch-1 prefix KV -> yes_no_logits and the prefix
    KV. Its prefix inputs keep batch 1, so Triton gets no batch axis."""

    name = "decoder_scorer"
    graphs = ("recommender.scorer",)
    batch_limit = "max_candidates"

    def io(self, layers: int = 1) -> GraphIO:
        past, present = kv_names(layers, "past_key_values"), kv_names(layers, "present")
        axes = {"inputs_embeds": {0: "batch", 1: "sequence"}, "suffix_mask": {0: "batch", 1: "sequence"},
                "logits_index": {0: "batch", 1: "positions"}, "yes_no_logits": {0: "batch", 1: "positions"},
                "prefix_embeds": {1: "prefix_sequence"}}
        axes.update({n: {2: "past_sequence"} for n in past})  # batch 1: the prefix is never copied
        axes.update({n: {2: "total_prefix_sequence"} for n in present})
        return GraphIO(("inputs_embeds", "suffix_mask", "logits_index", "prefix_embeds", *past),
                       ("yes_no_logits", *present), axes)

    def dim_ranges(self, limits):
        L = _limits(limits)
        C, pre, suf = L["max_candidates"], L["max_prefix_tokens"], L["max_suffix_tokens"]
        cand = {"batch": _rng(1, C, C), "sequence": _rng(1, _half(suf), suf), "positions": _one()}
        return [("first", {**cand, "prefix_sequence": _rng(1, _half(pre), pre), "past_sequence": _empty()}),
                ("next", {**cand, "prefix_sequence": _one(), "past_sequence": _rng(1, _half(pre), max(1, pre - 1))})]


@register
class UserEncoderKind(GraphKind):
    """SASRec: history int64 [batch, max_len] -> user_embedding [batch, d]."""

    name = "user_encoder"
    graphs = ("sasrec.user_encoder",)
    batch_limit = "user_batch"

    def io(self, layers: int = 1) -> GraphIO:
        return GraphIO(("history",), ("user_embedding",), {"history": {0: "batch"}, "user_embedding": {0: "batch"}})

    def dim_ranges(self, limits):
        B = _limits(limits)["user_batch"]
        return [("users", {"batch": _rng(1, B, B)})]

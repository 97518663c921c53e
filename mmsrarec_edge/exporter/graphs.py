"""The exportable graphs: thin torch wrappers with flat tensor inputs/outputs, and their ONNX export.

A LLaVA model splits into three graphs so the runtime can run each piece when it needs it:
- vision:  pixel_values [N,3,S,S] -> image_features [N, n_img, H] (tower + feature select + projector);
- embed:   input_ids [B,T] -> inputs_embeds [B,T,H]; the runtime splices image features over `<image>` slots;
- decoder: one *merged* graph (inputs_embeds, attention_mask [B, past+q], position_ids [B,q], past_key_values.{i}.key/
  value [B, kv_heads, past, head_dim]) -> logits + present.{i}.key/value [B, kv_heads, past+q, head_dim]. The past
  length may be 0, so the same graph does prefill, the batched candidate suffixes over an expanded shared prefix, and
  single-token decoding. Why merged and not a prefill/decode pair: the recommender's suffix call is neither (q > 1
  *and* past > 0), so a pair would need a third graph; a pair also stores the decoder weights twice (or needs shared
  external data that TensorRT and the fp16/int8 converters handle badly). ONNX Runtime and TensorRT both accept
  zero-length dimensions.

The graphs' names, dynamic axes and example inputs are their kinds' (core/graph_kinds.py, exporter/kinds.py).

Two heads: `last` (summarizer) returns full-vocabulary logits [B, V] of the last position only (prompts are left-padded,
so the last slot is always real; greedy decoding needs nothing else). `yes_no` (recommender) takes logits_index [B, K]
and returns yes_no_logits [B, K, 2]: the runtime only needs p(yes)/(p(yes)+p(no)) = sigmoid(l_yes - l_no), which the
softmax normaliser cancels out of, so the two lm_head rows give the exact score while skipping the [H x V] projection
per candidate (for the tiny default V = 30.5k, that projection costs more than the whole 2-layer decoder).

The decoder gets a prepared 4D additive mask (causal over slot order AND the 2D padding mask), which makes transformers
skip its vmap-based mask builders: both the legacy TorchScript exporter and the dynamo exporter trace it.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

OPSET = 17


# ---------------------------------------------------------------- wrappers


class VisionGraph(nn.Module):
    def __init__(self, llava):
        super().__init__()
        self.llava = llava

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # LlavaModel.get_image_features, minus its final `list(...)`: unbinding per image would freeze the image count.
        cfg, model = self.llava.config, self.llava.model
        hidden = model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        layers = cfg.vision_feature_layer if isinstance(cfg.vision_feature_layer, (list, tuple)) \
            else [cfg.vision_feature_layer]
        picked = [hidden[i][:, 1:] if cfg.vision_feature_select_strategy == "default" else hidden[i] for i in layers]
        return model.multi_modal_projector(torch.cat(picked, dim=-1))


class EmbedGraph(nn.Module):
    def __init__(self, llava):
        super().__init__()
        self.embed = llava.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


def additive_mask(attention_mask: torch.Tensor, q: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, past+q] 0/1 padding mask -> [B, 1, q, past+q] additive mask, causal over slot order."""
    total = attention_mask.shape[1]
    past = total - q
    key_pos = torch.arange(total, device=attention_mask.device)
    query_pos = torch.arange(q, device=attention_mask.device) + past
    allowed = (key_pos[None, :] <= query_pos[:, None])[None, None] & attention_mask[:, None, None, :].bool()
    # finfo.min, not -inf: a fully padded query row stays finite (uniform) instead of NaN.
    return torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


class DecoderGraph(nn.Module):
    """Merged decoder with flat KV tensors; `head` is "last" or "yes_no" (see module docstring)."""

    def __init__(self, llava, head: str = "last", yes_no_ids: tuple[int, int] | None = None):
        from ..models.families import language_model

        super().__init__()
        if head not in ("last", "yes_no"):
            raise ValueError(f"unknown decoder head {head!r}")
        self.lm = language_model(llava)
        self.num_layers = llava.config.text_config.num_hidden_layers
        self.head = head
        w = llava.lm_head.weight
        if head == "yes_no":
            if yes_no_ids is None:
                raise ValueError("yes_no head needs the token ids of the two answers")
            self.register_buffer("answer_rows", w[list(yes_no_ids)].detach().clone(), persistent=False)
            self.lm_head = None
        else:
            self.lm_head = llava.lm_head

    def forward(self, inputs_embeds, attention_mask, position_ids, *rest):
        from transformers import DynamicCache

        n = 2 * self.num_layers
        past, extra = rest[:n], rest[n:]
        q = inputs_embeds.shape[1]
        mask = additive_mask(attention_mask, q, inputs_embeds.dtype)
        cache = DynamicCache()
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.lm(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids,
                      past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state
        presents = []
        for i in range(self.num_layers):
            presents += [cache.layers[i].keys, cache.layers[i].values]
        if self.head == "last":
            return (self.lm_head(hidden[:, -1, :]), *presents)
        logits_index = extra[0]
        idx = logits_index[:, :, None].expand(-1, -1, hidden.shape[-1])
        picked = torch.gather(hidden, 1, idx)  # [B, K, H]
        return (picked @ self.answer_rows.to(picked.dtype).T, *presents)


class UserEncoderGraph(nn.Module):
    def __init__(self, sasrec_net):
        super().__init__()
        self.net = sasrec_net

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.net.user_embedding(history)


# ---------------------------------------------------------------- graph specs


@dataclass
class GraphSpec:
    """Names, dynamic axes and example inputs of one graph; what export_graph needs (built by exporter/kinds.py)."""

    name: str  # bundle key, e.g. "recommender.decoder"
    module: nn.Module
    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    example: tuple = field(repr=False, default=())


def kv_shape(llava) -> tuple[int, int, int]:
    tc = llava.config.text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return tc.num_hidden_layers, tc.num_key_value_heads, head_dim


# ---------------------------------------------------------------- export


def export_graph(spec: GraphSpec, path: Path, exporter: str = "legacy") -> Path:
    """Export `spec` to `path` (fp32). `legacy` is the TorchScript exporter (about 1 s for the tiny decoder);
    `dynamo` uses torch.export with optimize=False (about 8 s; its optimizer can fold away real arithmetic).
    Graphs over protobuf's 2 GB limit end up as `path` + one `<name>.onnx.data` file, whatever the exporter wrote."""
    import shutil
    import tempfile

    import onnx

    from .variants import save_onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / path.name
        if exporter == "legacy":
            with _weights_streamed() as params:
                torch.onnx.export(spec.module, spec.example, str(raw), input_names=spec.inputs,
                                  output_names=spec.outputs, dynamic_axes=spec.dynamic_axes, opset_version=OPSET,
                                  dynamo=False, do_constant_folding=True)
            if params:
                _write_weights(raw, params, path)
                return path
        elif exporter == "dynamo":
            torch.onnx.export(spec.module, spec.example, str(raw), input_names=spec.inputs,
                              output_names=spec.outputs, dynamic_shapes=_dynamic_shapes(spec), dynamo=True,
                              optimize=False, opset_version=max(OPSET, 18), external_data=True)
        else:
            raise ValueError(f"unknown exporter {exporter!r}")
        from . import variants

        if [p.name for p in Path(tmp).iterdir()] == [raw.name] and raw.stat().st_size <= variants.EXTERNAL_DATA_BYTES:
            shutil.move(str(raw), path)
        else:  # weights in side files (one per tensor with the legacy exporter): gather them into one
            save_onnx(onnx.load(str(raw)), path)
    return path


@contextmanager
def _weights_streamed():
    """Inside this context the legacy exporter writes the graph without its weights, and the weights it would have
    serialised (the model's parameters and the constants it folded, by initializer name) land in the yielded dict.

    Why: the exporter serialises every weight into one in-memory protobuf and copies it on the way to the file; at
    0.47B parameters (a 1.43 GB scorer graph) that step alone peaked 6.5 GB above the loaded model. `_write_weights`
    then streams them into the graph's file (or its `.onnx.data`), one tensor at a time. Uses the TorchScript
    exporter's `_model_to_graph` (torch 2.13, pinned); where it is missing the exporter runs unchanged (the dict stays
    empty)."""
    try:
        from torch.onnx._internal.torchscript_exporter import utils as ts_utils
        original = ts_utils._model_to_graph
    except (ImportError, AttributeError):  # another torch: the plain export
        yield {}
        return
    captured: dict = {}

    def model_to_graph(*args, **kwargs):
        graph, params, out = original(*args, **kwargs)
        captured.update(params)
        return graph, {}, out  # no weights in the protobuf: they stay graph inputs, named as in `captured`

    ts_utils._model_to_graph = model_to_graph
    try:
        yield captured
    finally:
        ts_utils._model_to_graph = original


def _write_weights(raw: Path, params: dict, path: Path) -> None:
    """The weightless graph at `raw` + `params` -> `path`: each graph input named in `params` becomes an initializer.
    Graphs whose weights exceed variants.EXTERNAL_DATA_BYTES keep them in `<path>.data`, written tensor by tensor in
    save_onnx's page-aligned layout (variants.write_external); smaller ones inline."""
    import hashlib

    import numpy as np
    import onnx
    from onnx import helper

    from .variants import EXTERNAL_DATA_BYTES, write_external

    model = onnx.load(str(raw))
    graph = model.graph
    names = [i.name for i in graph.input if i.name in params]
    total = sum(params[n].numel() * params[n].element_size() for n in names)
    external = total > EXTERNAL_DATA_BYTES
    data_path = path.with_name(path.name + ".data")
    inits, seen, alias = [], {}, {}
    with open(data_path, "wb") if external else nullcontext() as data:
        for name in names:
            array = params[name].detach().cpu().contiguous().numpy()
            # The exporter folds a weight once per consumer (the scorer's prefix and suffix paths share every
            # layer): equal tensors are stored once (its own dedup pass, bypassed here, did that with Identity nodes)
            key = (array.dtype.str, array.shape, hashlib.blake2b(array.tobytes() if array.nbytes < 1024
                                                                  else memoryview(array).cast("B"),
                                                                  digest_size=16).digest())
            if key in seen:
                alias[name] = seen[key]
                params[name] = None
                continue
            seen[key] = name
            t = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                                 dims=list(array.shape))
            if external and array.nbytes >= 1024:
                write_external(data, array, t, data_path.name)
            else:
                t.raw_data = np.ascontiguousarray(array).tobytes()
            inits.append(t)
            params[name] = None  # a folded constant is freed once written
    kept = [i for i in graph.input if i.name not in params]
    graph.ClearField("input")
    graph.input.extend(kept)
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in alias:
                node.input[k] = alias[name]
    graph.initializer.extend(inits)
    onnx.save_model(model, str(path))


def _dynamic_shapes(spec: GraphSpec):
    """dynamic_axes (by input name) -> torch.export dynamic_shapes (by forward parameter)."""
    from torch.export import Dim

    dims: dict[str, Dim] = {}

    def shape_of(name):
        axes = spec.dynamic_axes.get(name, {})
        return {ax: dims.setdefault(label, Dim(label)) for ax, label in axes.items()}

    if isinstance(spec.module, DecoderGraph):
        fixed = spec.inputs[:3]
        rest = tuple(shape_of(n) for n in spec.inputs[3:])
        return {"inputs_embeds": shape_of(fixed[0]), "attention_mask": shape_of(fixed[1]),
                "position_ids": shape_of(fixed[2]), "rest": rest}
    return tuple(shape_of(n) for n in spec.inputs)

"""Qwen2-VL and Qwen2.5-VL: the vision tower at a fixed resolution, and the decoder graphs with 3-D (M-RoPE) positions.

Vision (`QwenVisionGraph`): transformers' towers take flattened patch rows plus `grid_thw` and derive, from the grid's
VALUES, the attention blocks (`cu_seqlens`, split with `.tolist()`), Qwen2.5-VL's window permutation and windows, and
the 2-D rotary tables: none of that traces into a graph with a dynamic grid (../shared/FINDINGS.md). At one fixed
resolution (models/families.py: `image_size`) the grid is a constant, so this wrapper computes those once, with the
tower's own functions (`rot_pos_emb`, `get_window_index`), and keeps them as buffers: the rotary cos/sin per patch, the
window permutation and its inverse, and per block an additive mask (0 inside the block's attention span, finfo.min
outside: a window for Qwen2.5-VL's windowed blocks, nothing for full-attention blocks). Images run as a batch axis
(each image attends only to itself, which is what `cu_seqlens` says), so the graph keeps the toolkit's I/O contract:
pixel_values [images, 3, S, S] -> image_features [images, n_image_tokens, H]; the patch rows are cut inside the graph
exactly as the Qwen image processor cuts them (families.qwen_pixels). The tower's own modules do everything else
(patch embedding, norms, qkv/proj, MLP, merger); the parity gate compares with transformers' `get_image_features`.

Decoder: the merged decoder graph (graphs.DecoderGraph) is unchanged but for its `position_ids`, [3, batch, sequence]
(the language model rotates by them as it is); the runtime computes them in numpy (core/rope_index.py). The candidate
scorer (`MRopeSuffixScorerGraph`) takes `position_ids` [3, batch, sequence] for the suffixes and
`prefix_position_ids` [3, 1, prefix_sequence] for the prefix tokens as inputs (after prefix_embeds): a suffix's
positions continue from the prefix's largest + 1, which is not its length once the prefix holds an image; the read
slots' positions are gathered from position_ids at logits_index.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.graph_kinds import GraphIO
from ..models import families
from . import parity as P
from .kinds import (
    DecoderLastExport,
    DecoderScorerExport,
    DecoderYesNoExport,
    VisionExport,
    register,
)
from .suffix_graph import SuffixScorerGraph, llama_layout


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class QwenVisionGraph(nn.Module):
    """pixel_values [N, 3, S, S] -> image_features [N, n_image_tokens, H] at the model's fixed resolution."""

    def __init__(self, model):
        super().__init__()
        if not families.is_qwen(model):
            raise ValueError("QwenVisionGraph needs a Qwen2-VL or Qwen2.5-VL model")
        vc = model.config.vision_config
        self.visual = visual = model.model.visual
        self.p, self.m, self.T = int(vc.patch_size), int(vc.spatial_merge_size), int(vc.temporal_patch_size)
        self.S = families.image_size(model)
        g = self.S // self.p
        self.g, self.L, self.unit = g, g * g, self.m * self.m
        self.heads = int(vc.num_heads)
        self.out_dim = int(model.config.text_config.hidden_size)
        grid = torch.tensor([[1, g, g]])
        with torch.no_grad():
            rot = visual.rot_pos_emb(grid).float()  # [L, head_dim / 2]
        fmin = torch.finfo(torch.float32).min
        masks = [None] * len(visual.blocks)
        perm = reverse = None
        if model.config.model_type == "qwen2_5_vl":
            window_index, cu = visual.get_window_index(grid)
            perm = (window_index[:, None] * self.unit + torch.arange(self.unit)).reshape(-1)  # patch order
            rot = rot[perm]
            reverse = torch.argsort(window_index)
            cu = torch.unique_consecutive(torch.tensor(cu))
            window = torch.zeros(self.L, dtype=torch.long)
            for w, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
                window[a:b] = w
            bias = torch.zeros(self.L, self.L).masked_fill(window[:, None] != window[None, :], fmin)
            full = set(visual.fullatt_block_indexes)
            for i in range(len(visual.blocks)):
                if i not in full:
                    masks[i] = "window_bias"
            self.register_buffer("window_bias", bias, persistent=False)
        self.masks = masks
        self.register_buffer("perm", perm if perm is not None else torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("reverse", reverse if reverse is not None else torch.zeros(0, dtype=torch.long),
                             persistent=False)
        self.windowed = perm is not None
        emb = torch.cat([rot, rot], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def _attention(self, attn, x: torch.Tensor, bias) -> torch.Tensor:
        L, D, h = self.L, x.shape[-1], self.heads
        q, k, v = attn.qkv(x).reshape(-1, L, 3, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)  # [N, heads, L, hd]
        q = q * self.cos + _rotate_half(q) * self.sin
        k = k * self.cos + _rotate_half(k) * self.sin
        s = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling
        if bias is not None:
            s = s + bias
        out = torch.matmul(torch.softmax(s, dim=-1), v)  # [N, heads, L, hd]
        return attn.proj(out.transpose(1, 2).reshape(-1, L, D))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        p, m, T, g, L = self.p, self.m, self.T, self.g, self.L
        C = pixel_values.shape[1]
        x = pixel_values.unsqueeze(1).expand(-1, T, -1, -1, -1)
        x = x.reshape(-1, T, C, g // m, m, p, g // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        x = self.visual.patch_embed(x.reshape(-1, C * T * p * p))  # [N * L, D]
        D = x.shape[-1]
        x = x.reshape(-1, L, D)
        if self.windowed:
            x = x.index_select(1, self.perm)
        for blk, mask in zip(self.visual.blocks, self.masks):
            bias = getattr(self, mask) if mask else None
            x = x + self._attention(blk.attn, blk.norm1(x), bias)
            x = x + blk.mlp(blk.norm2(x))
        out = self.visual.merger(x.reshape(-1, D))  # [N * L / unit, H]
        out = out.reshape(-1, L // self.unit, self.out_dim)  # constants: the graph's output shape stays static
        if self.windowed:
            out = out.index_select(1, self.reverse)
        return out


def combine_sections(cos: torch.Tensor, section: list[int]) -> torch.Tensor:
    """[3, B, T, d] per-axis tables -> [B, T, d]: channel chunk i takes axis i % 3 (apply_multimodal_rotary_pos_emb)."""
    return torch.cat([c[i % 3] for i, c in enumerate(cos.split(list(section) * 2, dim=-1))], dim=-1)


class MRopeSuffixScorerGraph(SuffixScorerGraph):
    """The candidate scorer (suffix_graph.py) with 3-D positions as inputs (module docstring)."""

    position_inputs = 2  # position_ids [3, C, S], prefix_position_ids [3, 1, Pn]

    @staticmethod
    def supports(llava) -> str | None:
        if not families.is_qwen(llava):
            return "not a Qwen2-VL-family decoder"
        return llama_layout(llava)

    def __init__(self, llava, yes_no_ids: tuple[int, int]):
        super().__init__(llava, yes_no_ids)
        self.section = list(llava.config.text_config.rope_scaling["mrope_section"])

    def _positions(self, extra, logits_index, P0: int, Pn: int, S: int):
        positions, prefix_positions = extra
        read = torch.gather(positions, 2, logits_index[None].expand(3, -1, -1))  # [3, C, K]
        return prefix_positions, positions, read

    def _tables(self, like, positions):
        cos, sin = self.lm.rotary_emb(like, positions)  # [3, B, T, d]
        return combine_sections(cos, self.section), combine_sections(sin, self.section)


# ---------------------------------------------------------------- export kinds


def _qwen_only(model) -> str | None:
    return None if families.is_qwen(model) else "not a Qwen2-VL-family model"


@register
class QwenVisionExport(VisionExport):
    supports = classmethod(lambda cls, model: _qwen_only(model))

    def module(self, model, yes_no_ids=None) -> nn.Module:
        return QwenVisionGraph(model)

    def example(self, model) -> tuple:
        s = families.image_size(model)
        return (torch.zeros(2, 3, s, s),)

    def parity(self, run):
        acc, s = P.Metrics(), families.image_size(run.model)
        batches = [run.rng.standard_normal((1 + c % 3, 3, s, s)).astype(np.float32) for c in range(run.cases)]
        if run.real is not None and len(run.real):
            batches.append(np.asarray(run.real, np.float32))
        for px in batches:
            acc.add("features", run.runtime(px), families.image_features(run.model, torch.from_numpy(px)).numpy())
        return acc, {}


class _MRopeDecoder:
    """Merged decoder kinds with position_ids [3, batch, sequence]."""

    supports = classmethod(lambda cls, model: _qwen_only(model))

    def io(self, layers: int = 1) -> GraphIO:
        io = super().io(layers)
        axes = {n: dict(a) for n, a in io.dynamic_axes.items()}
        axes["position_ids"] = {1: "batch", 2: "sequence"}
        return GraphIO(io.inputs, io.outputs, axes)

    def example(self, model) -> tuple:
        ex = list(super().example(model))
        ex[2] = ex[2][None].expand(3, -1, -1).contiguous()
        return tuple(ex)


@register
class MRopeDecoderLastExport(_MRopeDecoder, DecoderLastExport):
    pass


@register
class MRopeDecoderYesNoExport(_MRopeDecoder, DecoderYesNoExport):
    pass


@register
class MRopeScorerExport(DecoderScorerExport):
    supports = classmethod(lambda cls, model: MRopeSuffixScorerGraph.supports(model))

    def io(self, layers: int = 1) -> GraphIO:
        io = super().io(layers)
        k = io.inputs.index("prefix_embeds") + 1
        axes = {n: dict(a) for n, a in io.dynamic_axes.items()}
        axes["position_ids"] = {1: "batch", 2: "sequence"}
        axes["prefix_position_ids"] = {2: "prefix_sequence"}
        return GraphIO((*io.inputs[:k], "position_ids", "prefix_position_ids", *io.inputs[k:]), io.outputs, axes)

    def module(self, model, yes_no_ids=None) -> nn.Module:
        return MRopeSuffixScorerGraph(model, yes_no_ids)

    def example(self, model) -> tuple:
        ex = list(super().example(model))
        C, S = ex[0].shape[:2]
        Pn, P0 = ex[3].shape[1], ex[4].shape[2]
        pos = torch.arange(P0 + Pn, P0 + Pn + S)[None, None].expand(3, C, S).contiguous()
        ppos = torch.arange(P0, P0 + Pn)[None, None].expand(3, 1, Pn).contiguous()
        return (*ex[:4], pos, ppos, *ex[4:])

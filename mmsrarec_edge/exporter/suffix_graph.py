"""The recommender's candidate-scoring graph: the shared prefix and every candidate suffix in ONE call, without ever
copying the prefix KV per candidate.

The merged decoder (graphs.py) scores candidates in two calls, a batch-1 prefill and a suffix call over the prefix KV
repeated C times along the batch axis; inside, each layer concatenates past and new keys, repeats the KV heads for
grouped-query attention and runs C small attention matmuls. On the recommender's workload (prefix ~120 tokens, 20
candidates of ~29 tokens, 2 layers) those copies, the second call and the work the score never reads are where the time
goes. This graph computes the same function differently:

- the prefix (tokens not yet in `past_key_values`) runs at batch 1 and extends the KV, which is returned for the next
  chunk of candidates;
- shared-prefix ("cascade") attention, as in Hydragen (arXiv 2402.05099): the queries of all C candidates are folded
  into the row axis of ONE matmul per KV head against the batch-1 prefix keys ([kv, C*q*group, d] x [kv, d, P]) and one
  against its values; each candidate's queries also attend to its own keys (causal, right padding masked); one
  softmax over both parts' scores is the exact softmax over the union of keys;
- last layer at the read slots only: nothing reads the last layer's prefix outputs, and the score reads the suffix's
  final hidden state at `logits_index` only, so the last layer computes keys/values everywhere (they are attended to)
  but queries, attention, MLP, final norm and the yes/no rows only at those slots. On the default 2-layer model that
  skips about 45% of the FLOPs.
One call replaces the merged decoder's prefill plus suffix call; benchmarks/results/latency/report.md compares them.

It is exact, not an approximation: the parity gate checks it against a plain forward of the language model over each
full unpadded prompt, chained over two chunks and at two read slots per row. Written out for the decoder families whose
layer is RMSNorm -> GQA attention with rotary embeddings -> RMSNorm -> gated MLP (transformers' llama, qwen2, mistral
without a sliding window; Qwen2-VL's and Qwen2.5-VL's text decoders with 3-D positions: exporter/qwen_vl.py); it
calls the model's own submodules (projections, norms, MLP, rotary embedding, so rope scaling variants carry over) and
only re-implements the attention arithmetic. Other decoders export without this graph
(the manifest's `graphs_skipped` says why) and the runtime falls back to the merged decoder with an expanded KV.

I/O (float32 at the boundary, ids/masks int64):
    inputs:  inputs_embeds [batch, sequence, H] (candidate suffixes, right-padded), suffix_mask [batch, sequence]
             (1 = real token), logits_index [batch, positions] (slots to score, each a real token),
             prefix_embeds [1, prefix_sequence, H] (prefix tokens not yet in the KV; at least one),
             past_key_values.{i}.key / .value [1, kv_heads, past_sequence, head_dim] (may be empty)
    outputs: yes_no_logits [batch, positions, 2],
             present.{i}.key / .value [1, kv_heads, past_sequence + prefix_sequence, head_dim]
Positions: prefix tokens continue from past_sequence, suffix tokens from past_sequence + prefix_sequence. A later chunk
re-feeds the prefix's last token over the KV of the others (a zero-length prefix_sequence would hit ONNX Reshape's
rule that a 0 in a target shape copies the input's dim).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.families import language_model

SUPPORTED_DECODERS = ("llama", "qwen2", "mistral")


def supports(llava) -> str | None:
    """None when the suffix graph can be built for this model, else why not (a sentence)."""
    tc = llava.config.text_config
    if tc.model_type not in SUPPORTED_DECODERS:
        return f"decoder {tc.model_type!r} is not one of {', '.join(SUPPORTED_DECODERS)}"
    return llama_layout(llava)


def llama_layout(llava) -> str | None:
    """None when the decoder's layers have the layout the graph re-implements, else why not (any decoder family)."""
    tc = llava.config.text_config
    if getattr(tc, "use_sliding_window", False) or (tc.model_type == "mistral" and getattr(tc, "sliding_window", None)):
        return "sliding-window attention is not implemented in the suffix graph"
    layer = language_model(llava).layers[0]
    attn = layer.self_attn
    if any(hasattr(attn, n) for n in ("q_norm", "k_norm")) or not all(
            hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
        return "the attention block does not have the llama layout (q/k/v/o projections, no q/k norms)"
    if getattr(tc, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1 is not supported"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class SuffixScorerGraph(nn.Module):
    """See the module docstring. Also used eagerly (a PyTorch peer in the latency benchmark)."""

    supports = staticmethod(supports)  # a subclass for another decoder family brings its own

    def __init__(self, llava, yes_no_ids: tuple[int, int]):
        super().__init__()
        why = self.supports(llava)
        if why:
            raise ValueError(why)
        tc = llava.config.text_config
        self.lm = language_model(llava)
        self.heads, self.kv_heads = tc.num_attention_heads, tc.num_key_value_heads
        self.head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        self.group = self.heads // self.kv_heads
        self.num_layers = tc.num_hidden_layers
        head = llava.lm_head
        rows = head.weight[list(yes_no_ids)].detach().clone()
        self.register_buffer("answer_rows", rows, persistent=False)
        bias = head.bias[list(yes_no_ids)].detach().clone() if getattr(head, "bias", None) is not None \
            else torch.zeros(2, dtype=rows.dtype)
        self.register_buffer("answer_bias", bias, persistent=False)

    def _attention(self, attn, q, k, v, k_pre, v_pre, bias, C):
        """Shared-prefix attention over C candidates. Rows are flattened tokens in (candidate, slot) order:
        q [N, kv, g, d] (N = C * Q; rotated, and scaled: the softmax scale rides on the small rotary tables),
        k/v [M, kv, d] (M = C * S suffix slots; k rotated), k_pre/v_pre [1, kv, P, d] (prefix), bias [1, C, Q*g, S]
        additive over the suffix keys -> [N, heads * d].
        Layout [kv, rows, ...]: the prefix scores are one matmul per KV head over every candidate's rows, the suffix
        scores a (kv, C)-batched matmul over the same memory (its transposed keys a flag ONNX Runtime fuses into the
        matmul). One softmax over [prefix | own suffix] scores is the exact softmax over the union of keys, and stays
        an fp32 Softmax in fp16 variants and TensorRT fp16 engines (variants.FP32_OPS, tensorrt.FP32_LAYER_TYPES),
        like the merged decoder's. Flattened rows keep most reshapes to one free (-1) axis, i.e. constant shapes
        rather than chains of shape nodes."""
        kv, g, d = self.kv_heads, self.group, self.head_dim
        P = k_pre.shape[2]
        qf = q.permute(1, 0, 2, 3).reshape(kv, -1, d)  # [kv, N*g, d]
        s_pre = torch.matmul(qf, k_pre[0].transpose(1, 2)).view(kv, C, -1, P)  # [kv, C, Q*g, P]
        kk = k.permute(1, 0, 2).reshape(kv, C, -1, d)  # [kv, C, S, d]
        vv = v.permute(1, 0, 2).reshape(kv, C, -1, d)
        s_suf = torch.matmul(qf.view(kv, C, -1, d), kk.transpose(2, 3)) + bias  # [kv, C, Q*g, S]
        p = torch.softmax(torch.cat([s_pre, s_suf], dim=-1), dim=-1)
        out = torch.matmul(p[..., :P].reshape(kv, -1, P), v_pre[0]).view(kv, C, -1, d) + torch.matmul(p[..., P:], vv)
        out = out.view(kv, -1, g, d).permute(1, 0, 2, 3).reshape(-1, kv * g * d)
        return attn.o_proj(out)

    def _prefix_attention(self, attn, q, k_all, v_all, bias):
        """Batch-1 causal attention of the new prefix tokens: q [Pn, kv, g, d] (rotated, scaled), k_all/v_all
        [1, kv, T, d] (past + new), bias [Pn*g, T] -> [Pn, heads * d]."""
        kv, g, d = self.kv_heads, self.group, self.head_dim
        qf = q.permute(1, 0, 2, 3).reshape(kv, -1, d)  # [kv, Pn*g, d]
        p = torch.softmax(torch.matmul(qf, k_all[0].transpose(1, 2)) + bias, dim=-1)  # [kv, Pn*g, T]
        out = torch.matmul(p, v_all[0]).view(kv, -1, g, d).permute(1, 0, 2, 3).reshape(-1, kv * g * d)
        return attn.o_proj(out)

    # ---- rotary positions: 1-D here (prefix from past_sequence on, suffixes from the whole prefix on); a subclass
    # with position inputs (MRopeSuffixScorerGraph) overrides these three

    position_inputs = 0  # extra inputs between prefix_embeds and the past KV

    def _positions(self, extra, logits_index, P0: int, Pn: int, S: int):
        """(prefix positions, suffix positions (batch 1 or C), read-slot positions [C, K]) as rotary_emb takes them."""
        dev = logits_index.device
        P = P0 + Pn
        return ((torch.arange(Pn, device=dev) + P0)[None], (torch.arange(S, device=dev) + P)[None], logits_index + P)

    def _tables(self, like, positions):
        """cos, sin [batch, T, head_dim] of `positions` (the softmax scale is applied by the caller)."""
        return self.lm.rotary_emb(like, positions)

    def forward(self, inputs_embeds, suffix_mask, logits_index, prefix_embeds, *rest):
        extra, past = rest[:self.position_inputs], rest[self.position_inputs:]
        H = inputs_embeds.shape[-1]
        C, S, P0, Pn = inputs_embeds.shape[0], inputs_embeds.shape[1], past[0].shape[2], prefix_embeds.shape[1]
        P, g, kv, d = P0 + Pn, self.group, self.kv_heads, self.head_dim
        h, hp = inputs_embeds.reshape(-1, H), prefix_embeds.reshape(-1, H)  # [C*S, H], [Pn, H]
        dev, dt = h.device, h.dtype
        # finfo.min, not -inf (as graphs.additive_mask): every query sees at least its own slot anyway.
        neg = torch.finfo(dt).min
        # The masks are built directly in the attention layouts (query rows repeated per group member): broadcasting
        # a trailing [.., 1] axis out to `group` with Expand cost ONNX Runtime about as much per call as the
        # attention's matmuls on the default model.
        # prefix tokens: positions P0.., causal over past + themselves; rotary tables [Pn, 1, d]
        ppos, spos, rpos = self._positions(extra, logits_index, P0, Pn, S)
        pcos, psin = self._tables(prefix_embeds, ppos)
        pcos, psin = pcos[0, :, None], psin[0, :, None]
        prow = torch.div(torch.arange(Pn * g, device=dev), g, rounding_mode="floor") + P0  # [Pn*g]
        pbias = torch.zeros((Pn * g, P), dtype=dt, device=dev).masked_fill(
            torch.arange(P, device=dev)[None, :] > prow[:, None], neg)
        # suffixes: positions P.., causal within each candidate, right padding masked; bias [1, C, query*g, key]
        slots = torch.arange(S, device=dev)
        cos, sin = self._tables(inputs_embeds, spos)  # [1 or C, S, d]
        cos, sin = cos.expand(C, -1, -1).reshape(-1, 1, d), sin.expand(C, -1, -1).reshape(-1, 1, d)  # [C*S, 1, d]
        row = torch.div(torch.arange(S * g, device=dev), g, rounding_mode="floor")
        allowed = (slots[None, :] <= row[:, None])[None] & suffix_mask[:, None, :].bool()  # [C, S*g, S]
        bias = torch.zeros(allowed.shape, dtype=dt, device=dev).masked_fill(~allowed, neg)[None]
        layers, presents = self.lm.layers, []
        for i in range(self.num_layers):
            layer = layers[i]
            a = layer.self_attn
            last = i == self.num_layers - 1
            # prefix: extend the KV; the last layer's prefix outputs are never read, so only its keys/values
            xp = layer.input_layernorm(hp)
            kp = _rope(a.k_proj(xp).view(-1, kv, d), pcos, psin).transpose(0, 1)[None]
            kp = torch.cat([past[2 * i], kp], dim=2)
            vp = torch.cat([past[2 * i + 1], a.v_proj(xp).view(-1, kv, d).transpose(0, 1)[None]], dim=2)
            presents += [kp, vp]
            if not last:
                qp = _rope(a.q_proj(xp).view(-1, kv, g, d), pcos[:, None] * a.scaling, psin[:, None] * a.scaling)
                hp = hp + self._prefix_attention(a, qp, kp, vp, pbias)
                hp = hp + layer.mlp(layer.post_attention_layernorm(hp))
            # suffixes: keys/values at every slot; in the last layer everything else at the read slots only
            x = layer.input_layernorm(h)
            k = _rope(a.k_proj(x).view(-1, kv, d), cos, sin)
            v = a.v_proj(x).view(-1, kv, d)
            if not last:
                q = _rope(a.q_proj(x).view(-1, kv, g, d), cos[:, None] * a.scaling, sin[:, None] * a.scaling)
                h = h + self._attention(a, q, k, v, kp, vp, bias, C)
                h = h + layer.mlp(layer.post_attention_layernorm(h))
                continue
            K = logits_index.shape[1]
            flat = (torch.arange(C, device=dev)[:, None] * S + logits_index).reshape(-1)  # rows of the read slots
            h_read, x_read = h.index_select(0, flat), x.index_select(0, flat)  # [C*K, H]
            qcos, qsin = self._tables(inputs_embeds, rpos)  # [C, K, d]
            q = _rope(a.q_proj(x_read).view(-1, kv, g, d), qcos.reshape(-1, 1, 1, d) * a.scaling,
                      qsin.reshape(-1, 1, 1, d) * a.scaling)
            read_row = logits_index[:, :, None].expand(C, K, g).reshape(C, -1, 1)  # [C, K*g, 1]
            read_bias = torch.zeros((C, K * g, S), dtype=dt, device=dev).masked_fill(
                slots[None, None, :] > read_row, neg)[None]  # right padding: slots <= index are real
            h_read = h_read + self._attention(a, q, k, v, kp, vp, read_bias, C)
            h_read = h_read + layer.mlp(layer.post_attention_layernorm(h_read))
        out = self.lm.norm(h_read)
        logits = out @ self.answer_rows.to(dt).T + self.answer_bias.to(dt)  # [C*K, 2]
        return (logits.view(C, -1, 2), *presents)


"""SASRec as RecBole builds it (recbole.model.sequential_recommender.SASRec), for SASRec models trained with RecBole.

RecBole's layout differs from ours (models/sasrec.py): post-LayerNorm transformer layers with a -10000 additive mask,
an embedding LayerNorm, no sqrt(d) scaling, and right-padded histories whose user embedding is read at the last real
item. `RecBoleSASRec` holds RecBole's state dict as is (key names below) and computes RecBole's user embedding from
our left-padded histories (positions count from the oldest item, as RecBole's do from slot 0), so it drops into
SASRecModel: `user_embedding`, `score`, the ONNX user encoder and the bundle's item embedding table.

    item_embedding.weight                         [n_items, d]   row 0 = padding, row k = RecBole's internal id k
    position_embedding.weight                     [max_len, d]
    trm_encoder.layer.{i}.multi_head_attention.{query,key,value,dense}.{weight,bias}
    trm_encoder.layer.{i}.multi_head_attention.LayerNorm.{weight,bias}
    trm_encoder.layer.{i}.feed_forward.{dense_1,dense_2,LayerNorm}.{weight,bias}
    LayerNorm.{weight,bias}

Loading a file (safetensors, or a torch file that loads with `torch.load(weights_only=True)`) never unpickles code:
a file that needs pickle (RecBole's own checkpoints keep the Config object beside the state dict) is refused with one
line saying how to save the state dict alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import UserError

ARCH = "recbole"
_LAYER = re.compile(r"^trm_encoder\.layer\.(\d+)\.")
REQUIRED = ("item_embedding.weight", "position_embedding.weight", "LayerNorm.weight", "LayerNorm.bias")
PER_LAYER = [f"multi_head_attention.{m}.{p}" for m in ("query", "key", "value", "dense", "LayerNorm")
             for p in ("weight", "bias")] + \
            [f"feed_forward.{m}.{p}" for m in ("dense_1", "dense_2", "LayerNorm") for p in ("weight", "bias")]
ACTS = ("gelu", "relu", "swish", "tanh", "sigmoid")


@dataclass
class RecBoleSASRecConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    inner: int = 256
    max_len: int = 50
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    arch: str = ARCH


def _act(name: str):
    return {"gelu": lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))), "relu": torch.relu,
            "swish": lambda x: x * torch.sigmoid(x), "tanh": torch.tanh, "sigmoid": torch.sigmoid}[name]


class _Attention(nn.Module):
    def __init__(self, cfg: RecBoleSASRecConfig):
        super().__init__()
        d = cfg.hidden
        self.heads, self.head_dim = cfg.heads, d // cfg.heads
        self.query, self.key, self.value, self.dense = (nn.Linear(d, d) for _ in range(4))
        self.LayerNorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape

        def split(t):
            return t.view(B, L, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask
        ctx = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, L, -1)
        return self.LayerNorm(self.dense(ctx) + x)


class _FeedForward(nn.Module):
    def __init__(self, cfg: RecBoleSASRecConfig):
        super().__init__()
        self.dense_1 = nn.Linear(cfg.hidden, cfg.inner)
        self.dense_2 = nn.Linear(cfg.inner, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.act = _act(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense_2(self.act(self.dense_1(x))) + x)


class _Layer(nn.Module):
    def __init__(self, cfg: RecBoleSASRecConfig):
        super().__init__()
        self.multi_head_attention = _Attention(cfg)
        self.feed_forward = _FeedForward(cfg)

    def forward(self, x, mask):
        return self.feed_forward(self.multi_head_attention(x, mask))


class _Encoder(nn.Module):
    def __init__(self, cfg: RecBoleSASRecConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.layers))


class RecBoleSASRec(nn.Module):
    """RecBole's SASRec (eval mode: no dropout) over our left-padded index histories."""

    def __init__(self, n_items: int, cfg: RecBoleSASRecConfig):
        super().__init__()
        self.cfg, self.n_items = cfg, n_items
        self.item_embedding = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(cfg.max_len, cfg.hidden)
        self.trm_encoder = _Encoder(cfg)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)

    @property
    def item_emb(self) -> nn.Embedding:
        """The item table under our SASRec's name (first stage, rank hint, bundle item embeddings)."""
        return self.item_embedding

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: int64 [B, L] left-padded with 0 -> hidden states [B, L, d] (RecBole's, at the real items)."""
        B, L = seq.shape
        real = seq > 0
        n = real.sum(-1, keepdim=True)
        # RecBole puts the oldest item at slot 0: position = slot - (number of padding slots), 0 on padding
        pos = (torch.arange(L, device=seq.device)[None, :] - (L - n)).clamp(min=0)
        x = self.LayerNorm(self.item_embedding(seq) + self.position_embedding(pos))
        causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=seq.device))
        allowed = causal[None, None] & real[:, None, None, :]
        mask = torch.where(allowed, 0.0, -10000.0).to(x.dtype)
        for layer in self.trm_encoder.layer:
            x = layer(x, mask)
        return x

    def user_embedding(self, seq: torch.Tensor) -> torch.Tensor:
        return self.encode(seq)[:, -1, :]

    def score(self, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        u = self.user_embedding(seq)
        return (self.item_embedding(items) * u[:, None, :]).sum(-1)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a torch file that loads with weights_only=True (a {"state_dict": ...}
    checkpoint is unwrapped). Anything that needs pickle is one UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"SASRec weights {path} do not exist", "pass a .safetensors or .pt file, or our SASRec dir")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise UserError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler's refusal is one kind among the file errors below
        if type(exc).__name__ != "UnpicklingError":
            raise UserError(f"{path}: not a readable torch file ({type(exc).__name__}: {str(exc).strip()[:160]})",
                            "pass a .safetensors file or a torch.save'd state dict") from None
        first = str(exc).strip().splitlines()
        why = next((ln for ln in first if "Unsupported global" in ln), first[0] if first else "")
        raise UserError(f"{path} needs pickle to load, which can run code, so it is refused ({why.strip()[:160]})",
                        "save the state dict alone: torch.save(model.state_dict(), 'sasrec.pt') or "
                        "safetensors.torch.save_file(model.state_dict(), 'sasrec.safetensors')") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise UserError(f"{path}: not a state dict (a mapping of names to tensors)",
                        "save the state dict: torch.save(model.state_dict(), path)")
    return obj


def config_from_state_dict(sd: dict, heads: int, hidden_act: str = "gelu", layer_norm_eps: float = 1e-12,
                           where: str = "state dict") -> RecBoleSASRecConfig:
    """The architecture a RecBole SASRec state dict implies (the head count is not in it: RecBole's default is 2)."""
    missing = [k for k in REQUIRED if k not in sd]
    if missing:
        raise UserError(f"{where}: not a RecBole SASRec state dict (no {missing[0]})",
                        "expected RecBole's SASRec key names: item_embedding, position_embedding, "
                        "trm_encoder.layer.N..., LayerNorm")
    layers = sorted({int(m.group(1)) for k in sd for m in [_LAYER.match(k)] if m})
    if not layers or layers != list(range(len(layers))):
        raise UserError(f"{where}: no trm_encoder.layer.0... weights", "is it RecBole's SASRec?")
    for i in layers:
        for key in PER_LAYER:
            if f"trm_encoder.layer.{i}.{key}" not in sd:
                raise UserError(f"{where}: trm_encoder.layer.{i}.{key} is missing")
    d = int(sd["item_embedding.weight"].shape[1])
    if heads < 1 or d % heads:
        raise UserError(f"{where}: hidden size {d} is not divisible by {heads} heads", "pass the model's head count")
    if hidden_act not in ACTS:
        raise UserError(f"unknown hidden_act {hidden_act!r}", f"known: {', '.join(ACTS)}")
    inner = int(sd["trm_encoder.layer.0.feed_forward.dense_1.weight"].shape[0])
    return RecBoleSASRecConfig(hidden=d, layers=len(layers), heads=heads, inner=inner,
                               max_len=int(sd["position_embedding.weight"].shape[0]),
                               layer_norm_eps=layer_norm_eps, hidden_act=hidden_act)


def build(sd: dict, cfg: RecBoleSASRecConfig, where: str = "state dict") -> RecBoleSASRec:
    n_items = int(sd["item_embedding.weight"].shape[0]) - 1
    net = RecBoleSASRec(n_items, cfg)
    extra = sorted(set(sd) - set(net.state_dict()))
    if extra:
        raise UserError(f"{where}: unexpected key {extra[0]}", "is it RecBole's SASRec (not another model)?")
    try:
        net.load_state_dict({k: v.float() for k, v in sd.items()})
    except RuntimeError as exc:
        raise UserError(f"{where}: shapes do not fit one SASRec ({str(exc).strip().splitlines()[-1][:160]})") \
            from None
    return net.eval()

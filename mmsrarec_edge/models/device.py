"""Where and in what precision a stage trains: `--device cuda|cpu`, `--dtype bf16|fp16|fp32`, gradient checkpointing
and LoRA for decoders from 1B parameters up (`train summarizer`, `train recommender`).

- The model and every tensor a step builds live on the device (`on(model, ...)` moves a batch's tensors there).
- bf16/fp16 run the forward under torch.autocast; trainable weights stay fp32 (master weights), fp16 scales the
  loss (GradScaler, models/training.Stepper). A decoder of `large_decoder_params` parameters or more trains LoRA
  adapters (its frozen base weights are cast to the dtype, the adapters stay fp32) with gradient checkpointing;
  smaller ones train every weight, as the tiny default does.
- After training the model goes back to the CPU in fp32: saving, evaluation and the export read it there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..core.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("cpu", "cuda")
LARGE_DECODER_PARAMS = 1_000_000_000


@dataclass
class Placement:
    device: str = "cpu"
    dtype: str = "fp32"
    gradient_checkpointing: str = "auto"  # auto (decoders from large_decoder_params up) | on | off
    large_decoder_params: int = LARGE_DECODER_PARAMS

    def __post_init__(self):
        check(self.device, self.dtype, self.gradient_checkpointing)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def autocast(self):
        """The forward's precision context (nothing for fp32)."""
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.torch_device.type, dtype=self.torch_dtype)

    def large(self, model) -> bool:
        return decoder_params(model) >= self.large_decoder_params

    def checkpointing(self, model) -> bool:
        return self.gradient_checkpointing == "on" or (self.gradient_checkpointing == "auto" and self.large(model))


def check(device: str, dtype: str, gradient_checkpointing: str = "auto") -> None:
    if device not in DEVICES:
        raise UserError(f"device must be cpu or cuda, got {device!r}")
    if dtype not in DTYPES:
        raise UserError(f"dtype must be bf16, fp16 or fp32, got {dtype!r}")
    if gradient_checkpointing not in ("auto", "on", "off"):
        raise UserError(f"gradient_checkpointing must be auto, on or off, got {gradient_checkpointing!r}")


def resolve(p: Placement) -> Placement:
    """Refuse what this machine cannot run (one line each), before any work."""
    if p.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: PyTorch sees no CUDA device here",
                        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}); use --device cpu")
    if p.device == "cpu" and p.dtype == "fp16":
        raise UserError("--dtype fp16 needs --device cuda", "on a CPU use bf16 or fp32")
    if p.device == "cuda" and p.dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16", "use --dtype fp16")
    return p


def decoder_params(model) -> int:
    lm = getattr(getattr(model, "model", model), "language_model", None) or model
    return sum(p.numel() for p in lm.parameters())


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def on(model, *tensors):
    """The tensors (None passes) on the model's device."""
    dev = device_of(model)
    out = tuple(None if t is None else t.to(dev, non_blocking=True) for t in tensors)
    return out[0] if len(out) == 1 else out


def place(model, p: Placement, lora: bool = False) -> dict:
    """Move `model` to the device; with `lora` (a large decoder: its base weights are frozen) cast them to the dtype
    first; gradient checkpointing when the placement asks. Returns what was done (for the training log)."""
    if lora and p.dtype != "fp32":
        model.to(p.torch_dtype)
    model.to(p.torch_device)
    ckpt = p.checkpointing(model)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return {"device": p.device, "dtype": p.dtype, "gradient_checkpointing": ckpt,
            "decoder_params": decoder_params(model), "base_weights": p.dtype if lora else "fp32"}


def unplace(model):
    """Back to the CPU in fp32, checkpointing off (what saving and the export read)."""
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    return model.to(device="cpu", dtype=torch.float32)

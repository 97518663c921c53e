"""SummarizerConfig: every setting of stage 1 (targets, prompts, SFT, reference LM, GRPO, reward weights). Torch-free.

Defaults run the whole stage on the synthetic catalog (300 items) on 2 CPU cores in a few minutes. The paper gives no
reward weights, LoRA settings or reward models; the values here are chosen and measured in
benchmarks/results/summarizer/report.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..core.errors import UserError
from .targets import SYNTH_IMAGE_ATTRIBUTES, SYNTH_TEXT_ATTRIBUTES


@dataclass
class SummarizerConfig:
    seed: int = 0
    threads: int = 1  # tiny matmuls: one thread beats two on 2 shared cores (OpenMP barriers spin)
    device: str = "cpu"  # cpu | cuda: the summarizer and every batch tensor (models/device.py)
    dtype: str = "fp32"  # fp32 | bf16 | fp16: autocast precision; trainable weights stay fp32
    gradient_checkpointing: str = "auto"  # auto: on for decoders of large_decoder_params and up | on | off
    large_decoder_params: int = 1_000_000_000  # from this decoder size up, SFT trains LoRA too (lora_r, lora_alpha)
    # items
    held_out_fraction: float = 0.15  # items never trained on; the before/after-RL comparison is made on them
    max_train_items: int = 0  # 0 = every non-held-out item; large catalogs subsample to stay within minutes
    max_eval_items: int = 150  # held-out items scored before and after RL
    # SFT targets: auto = attributes when every item has the text attribute keys, else tfidf
    targets: str = "auto"
    image_attributes: tuple[str, ...] = SYNTH_IMAGE_ATTRIBUTES
    text_attributes: tuple[str, ...] = SYNTH_TEXT_ATTRIBUTES
    tfidf_k: int = 5
    # prompts and decoding
    max_text_tokens: int = 96
    max_new_tokens: int = 20
    max_keywords: int = 8
    # SFT warm start (full fine-tuning: the default model starts random)
    sft_steps: int = 1000
    sft_batch_size: int = 16
    sft_lr: float = 3e-3
    sft_warmup: int = 25
    freeze_embeddings: bool = True  # embedded default only: MiniLM token embeddings stay frozen (see embeddings.py)
    align_steps: int = 0  # embedded default only: InfoNCE vision-keyword alignment before SFT (see align.py)
    # frozen reference LM for R_recon (a small text LM trained here on keywords -> text)
    recon_steps: int = 400
    recon_batch_size: int = 32
    recon_lr: float = 2e-3
    recon_hidden: int = 128
    recon_layers: int = 2
    recon_vocab: int = 4096  # the most frequent WordPiece ids of the catalog's texts; rarer ones map to [UNK]
    # GRPO with LoRA on the decoder
    grpo_steps: int = 60
    grpo_batch_size: int = 8  # prompts per step (half image, half text where images exist)
    num_generations: int = 4
    temperature: float = 1.0
    grpo_lr: float = 3e-4
    beta: float = 0.04  # KL(policy || SFT model), k3 estimator
    clip_eps: float = 0.2
    grpo_iterations: int = 1  # optimisation passes per generated batch (1 = on-policy)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # reward R = a * R_info + b * R_recon + c * R_len (the paper's parts, rewards.py)
    a: float = 1.0
    b: float = 0.1
    c: float = 0.02
    # the scale the parts are weighted on in GRPO: "group" = each part standardised within its GRPO group (a, b, c
    # are then the parts' relative say whatever their units); "log_ppl" = the paper's sum with -log perplexity as
    # R_recon; "paper" = the paper's sum as written (R_recon = -perplexity). Why group: rewards.py
    reward_scale: str = "group"
    # collapse warning (`train summarizer`, summarize/pipeline.py collapse_check): over the evaluated held-out items,
    # RL's distinct keywords below collapse_distinct_ratio x the SFT model's, the final model's below
    # collapse_target_ratio x its SFT targets', or more than collapse_empty_share of the items without a keyword
    collapse_distinct_ratio: float = 0.5
    collapse_target_ratio: float = 0.1
    collapse_empty_share: float = 0.1

    def __post_init__(self):
        self.image_attributes = tuple(self.image_attributes)
        self.text_attributes = tuple(self.text_attributes)
        if self.targets not in ("auto", "attributes", "tfidf"):
            raise UserError(f"targets must be auto, attributes or tfidf, got {self.targets!r}")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise UserError(f"held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
        for name in ("sft_batch_size", "recon_batch_size", "grpo_batch_size", "max_new_tokens", "max_keywords",
                     "max_text_tokens", "tfidf_k", "lora_r", "grpo_iterations", "threads", "recon_hidden",
                     "recon_layers"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise UserError(f"num_generations must be at least 2 (GRPO compares a group), got {self.num_generations}")
        for name in ("sft_steps", "recon_steps", "grpo_steps", "align_steps", "max_train_items", "max_eval_items"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.recon_vocab < 16:
            raise UserError(f"recon_vocab must be at least 16, got {self.recon_vocab}")
        if self.device not in ("cpu", "cuda") or self.dtype not in ("fp32", "bf16", "fp16") or \
                self.gradient_checkpointing not in ("auto", "on", "off"):
            raise UserError(f"device must be cpu or cuda, dtype bf16, fp16 or fp32, gradient_checkpointing auto, on "
                            f"or off; got {self.device!r}, {self.dtype!r}, {self.gradient_checkpointing!r}")
        if min(self.collapse_distinct_ratio, self.collapse_target_ratio) < 0 or \
                not 0 <= self.collapse_empty_share <= 1:
            raise UserError("collapse_distinct_ratio and collapse_target_ratio must be >= 0 and collapse_empty_share "
                            f"in [0, 1], got {self.collapse_distinct_ratio}, {self.collapse_target_ratio}, "
                            f"{self.collapse_empty_share}")
        if self.reward_scale not in ("group", "log_ppl", "paper"):
            raise UserError(f"reward_scale must be group, log_ppl or paper, got {self.reward_scale!r}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")

    def placement(self):
        """Where the summarizer trains (models/device.Placement; needs torch)."""
        from ..models.device import Placement

        return Placement(self.device, self.dtype, self.gradient_checkpointing, self.large_decoder_params)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_attributes"] = list(self.image_attributes)
        d["text_attributes"] = list(self.text_attributes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SummarizerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown summarizer settings: {', '.join(unknown)}", f"known: {', '.join(sorted(known))}")
        return cls(**d)

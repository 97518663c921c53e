"""Benchmark peers that are not our runtime: optimum's ORTModelForCausalLM scoring one full prompt per candidate.

optimum-onnx exports text decoders only (no LLaVA), so the peer takes the recommender's language model and LM head
out of the LLaVA wrapper into a plain `*ForCausalLM` with identical weights. That is exact for text-only prompts
(the recommender's prompt carries keywords, not pixels); prompts with `<image>` slots are refused rather than scored
wrongly. The PyTorch peers (naive and prefix-sharing) live with the recommender's torch scoring code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.scores import yes_probability


def extract_text_lm(llava):
    """LLaVA -> LlamaForCausalLM / Qwen2ForCausalLM with the same decoder and LM-head weights."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_config(llava.config.text_config)
    state = {f"model.{k}": v for k, v in llava.model.language_model.state_dict().items()}
    state.update({f"lm_head.{k}": v for k, v in llava.lm_head.state_dict().items()})
    result = lm.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"text LM extraction mismatch: {result}")
    return lm.eval()


class OptimumPerCandidate:
    """optimum ORTModelForCausalLM, one full prompt (prefix + candidate suffix) per forward call."""

    name = "optimum ORTModelForCausalLM (per candidate)"

    def __init__(self, llava, tokenizer, workdir: Path, yes_id: int, no_id: int, image_token_id: int | None = None):
        from optimum.onnxruntime import ORTModelForCausalLM

        workdir = Path(workdir)
        lm_dir = workdir / "text_lm"
        extract_text_lm(llava).save_pretrained(lm_dir)
        tokenizer.save_pretrained(lm_dir)
        self.model = ORTModelForCausalLM.from_pretrained(lm_dir, export=True, use_cache=True, use_io_binding=False)
        self.yes_id, self.no_id = yes_id, no_id
        self.image_token_id = image_token_id

    def score(self, prefix_ids: list[int], suffixes: list[list[int]]) -> np.ndarray:
        import torch

        if self.image_token_id is not None and self.image_token_id in prefix_ids + [t for s in suffixes for t in s]:
            raise UserError("the optimum peer scores text-only prompts; this prompt has image slots")
        out = np.empty(len(suffixes))
        with torch.no_grad():
            for c, suf in enumerate(suffixes):
                ids = torch.tensor([prefix_ids + suf])
                logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
                out[c] = yes_probability(float(logits[self.yes_id]), float(logits[self.no_id]))
        return out

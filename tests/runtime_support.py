"""Helpers for the runtime tests: a tiny random LLaVA exported to the runtime's split graphs (no pytest fixtures here;
the test modules wrap these in module/session-scoped fixtures)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class TinyGraphs:
    model: object  # LlavaForConditionalGeneration (torch)
    tokenizer: object  # PreTrainedTokenizerFast
    dir: Path
    yes_id: int
    no_id: int
    image_token_id: int

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.onnx"


def export_tiny_llava(out: Path, seed: int = 0, hidden: int = 64) -> TinyGraphs:
    """A random tiny LLaVA (CLIP 64 px / patch 16 -> 16 image tokens, Qwen2 hidden `hidden` x 2 layers) exported as
    vision.onnx, embed.onnx, decoder_last.onnx and decoder_yes_no.onnx with the exporter's graph wrappers."""
    import torch

    from mmsrarec_edge.exporter.graphs import decoder_spec, embed_spec, export_graph, vision_spec
    from mmsrarec_edge.models.mllm import IMAGE_TOKEN, MLLMConfig, build_mllm, build_tokenizer

    torch.set_num_threads(2)
    tok = build_tokenizer()
    model = build_mllm(MLLMConfig(hidden_size=hidden, intermediate_size=2 * hidden, seed=seed), tok)
    # At the default init (std 0.02) the residual stream carries the last prompt token through and every prompt
    # generates ":" forever; larger decoder weights make rows differ, so the tests can tell them apart.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.model.language_model.layers.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    out = Path(out)
    export_graph(vision_spec(model, "v"), out / "vision.onnx")
    export_graph(embed_spec(model, "e"), out / "embed.onnx")
    export_graph(decoder_spec(model, "d", "last"), out / "decoder_last.onnx")
    export_graph(decoder_spec(model, "d", "yes_no", (yes, no)), out / "decoder_yes_no.onnx")
    tok.save_pretrained(out / "tok")
    return TinyGraphs(model, tok, out, yes, no, tok.convert_tokens_to_ids(IMAGE_TOKEN))


def torch_yes_probability(model, ids: list[int], pixel_values: np.ndarray | None, yes_id: int, no_id: int) -> float:
    """PyTorch reference: the full LLaVA forward over one unpadded prompt, sigmoid(l_yes - l_no) at its last token."""
    import torch

    with torch.no_grad():
        pv = None if pixel_values is None else torch.from_numpy(np.asarray(pixel_values, np.float32))
        logits = model(input_ids=torch.tensor([ids]), pixel_values=pv).logits[0, -1].double()
        return float(torch.sigmoid(logits[yes_id] - logits[no_id]))


@functools.lru_cache(maxsize=None)
def shared_tiny_llava(seed: int = 0) -> TinyGraphs:
    """One export per test process, shared by the runtime test modules (exporting costs a few seconds)."""
    out = Path(tempfile.mkdtemp(prefix="mmsrarec_rt_"))
    atexit.register(shutil.rmtree, out, True)
    return export_tiny_llava(out, seed)

"""SmolVLM / Idefics3 (`SmolVLMForConditionalGeneration`, `Idefics3ForConditionalGeneration`): the vision graph; the
decoder graphs are the LLaVA ones.

Both are a SigLIP-style ViT -> pixel shuffle (`scale_factor` x `scale_factor` patch blocks folded into the channels)
-> one Linear (the connector) -> a Llama decoder (`text_model`, families.language_model) with 1-D positions that reads
the features at its image-token slots, as LLaVA does.

The image processor splits a large image into tiles plus a global view (`do_image_splitting`) and pads images to a
batch's largest; the tower then derives each image's patch grid from `patch_attention_mask` in a per-image Python loop
(`torch.bucketize` over fractional coordinates scaled by (1 - 1e-6)): that does not trace to a fixed graph. Here every
image is ONE tile at the tower's own size (`vision_config.image_size`; do_image_splitting off, core/imaging.py), so
every patch is real and the position ids are a constant: `Idefics3VisionGraph` computes them once with the tower's own
arithmetic, keeps them as a buffer and runs the tower's modules (patch embedding, position table, encoder, post norm)
and the connector. pixel_values [images, 3, S, S] -> image_features [images, n_image_tokens, H]; the parity gate
compares with transformers' get_image_features (families.image_features).

Exporter (../shared/FINDINGS.md): the dynamo exporter's default optimizer folds `x * (1 - 1e-6)` to `x` (0.17 error on
the whole model), so the toolkit's dynamo path runs with optimize=False (graphs.export_graph); with the position ids a
constant, the legacy exporter traces this wrapper too, and the profile's exporter is used as for every family.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import families
from .kinds import register
from .qwen_vl import QwenVisionExport


def position_ids(model) -> torch.Tensor:
    """The tower's patch position ids [L] for one full image at its own size (the embeddings' loop, one image)."""
    emb = model.model.vision_model.embeddings
    n = families.image_size(model) // families._patch(model)
    nps = emb.num_patches_per_side
    boundaries = torch.arange(1 / nps, 1.0, 1 / nps)
    idx = torch.arange(n, dtype=torch.float32)
    frac = idx / torch.tensor(n) * (1 - 1e-6)
    bucket = torch.bucketize(frac, boundaries, right=True)
    return (bucket[:, None] * nps + bucket).flatten()


class Idefics3VisionGraph(nn.Module):
    """pixel_values [N, 3, S, S] -> image_features [N, n_image_tokens, H] at the tower's fixed resolution."""

    def __init__(self, model):
        super().__init__()
        if not families.is_idefics(model):
            raise ValueError("Idefics3VisionGraph needs a SmolVLM or Idefics3 model")
        self.vision = model.model.vision_model
        self.connector = model.model.connector
        self.register_buffer("position_ids", position_ids(model), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        emb = self.vision.embeddings
        x = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [N, L, D]
        x = x + emb.position_embedding(self.position_ids)[None]
        x = self.vision.encoder(inputs_embeds=x, attention_mask=None).last_hidden_state  # every patch is real
        return self.connector(self.vision.post_layernorm(x))


@register
class Idefics3VisionExport(QwenVisionExport):
    """The vision kind for SmolVLM / Idefics3: its graph; the example (two images at the fixed size) and the parity
    check against transformers' get_image_features are the fixed-resolution ones (QwenVisionExport, through
    families)."""

    supports = classmethod(lambda cls, model: None if families.is_idefics(model) else "not a SmolVLM / Idefics3 model")

    def module(self, model, yes_no_ids=None) -> nn.Module:
        return Idefics3VisionGraph(model)

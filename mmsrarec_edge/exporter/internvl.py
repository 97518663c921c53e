"""InternVL3 (`InternVLForConditionalGeneration`): the vision graph; the decoder graphs are the LLaVA ones.

InternVL3 is InternViT (patch embedding + CLS + absolute position embeddings, pre-norm layers with layer scale) ->
drop CLS -> pixel shuffle (each 2 x 2 patch block folded into the channels, `downsample_ratio` 0.5) -> MLP projector
(LayerNorm, Linear, GELU, Linear) -> a Qwen2 or Llama decoder with 1-D positions that reads the projected features at
its image-token slots, exactly as LLaVA does. So only the vision graph is this family's own.

Vision (`InternVLVisionGraph`): pixel_values [images, 3, S, S] -> image_features [images, n_image_tokens, H] at the
tower's own resolution S (`vision_config.image_size`; one tile per image: the image processor's `crop_to_patches`
tiling is not used, models/families.py). transformers' embeddings re-interpolate the position table whenever they are
traced (bicubic, to the same size); at the fixed size the table is added as it is, so the wrapper runs the tower's own
modules (patch projection, CLS token, layers, norm), `pixel_shuffle` and the projector, and leaves the Resize out.
The parity gate compares with transformers' `get_image_features` (families.image_features). Both exporters trace it;
the legacy one (the profile default) is used.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import families
from .kinds import register
from .qwen_vl import QwenVisionExport


class InternVLVisionGraph(nn.Module):
    """pixel_values [N, 3, S, S] -> image_features [N, n_image_tokens, H] at the tower's fixed resolution."""

    def __init__(self, model):
        super().__init__()
        if not families.is_internvl(model):
            raise ValueError("InternVLVisionGraph needs an InternVL model")
        if model.config.vision_feature_layer != -1:
            raise ValueError("InternVLVisionGraph reads the tower's last layer (vision_feature_layer -1)")
        self.inner = model.model
        self.tower = model.model.vision_tower
        self.drop_cls = model.config.vision_feature_select_strategy == "default"
        self.ratio = float(model.config.downsample_ratio)
        self.side = families.image_size(model) // families._patch(model)
        self.tokens = families.num_image_tokens(model)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        emb = self.tower.embeddings
        x, _ = emb.patch_embeddings(pixel_values)  # [N, L, D]
        x = torch.cat([emb.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if emb.position_embeddings is not None:
            x = x + emb.position_embeddings  # the tower's own size: no interpolation
        for layer in self.tower.encoder.layer:
            x = layer(x)
        x = self.tower.layernorm(x)
        if self.drop_cls:
            x = x[:, 1:, :]
        D = x.shape[-1]
        x = self.inner.pixel_shuffle(x.reshape(-1, self.side, self.side, D), scale_factor=self.ratio)
        return self.inner.multi_modal_projector(x.reshape(-1, self.tokens, x.shape[-1]))


@register
class InternVLVisionExport(QwenVisionExport):
    """The vision kind for InternVL: its graph; the example (two images at the fixed size) and the parity check
    against transformers' get_image_features are the fixed-resolution ones (QwenVisionExport, through families)."""

    supports = classmethod(lambda cls, model: None if families.is_internvl(model) else "not an InternVL model")

    def module(self, model, yes_no_ids=None) -> nn.Module:
        return InternVLVisionGraph(model)

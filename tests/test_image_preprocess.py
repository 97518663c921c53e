"""Image preprocessing from the checkpoint: imaging.ImagePreprocess (numpy + Pillow, torch-free) gives the pixels of
transformers' own image processors (CLIPImageProcessor, SiglipImageProcessor), is read from preprocessor_config.json by
load_mllm, written into the bundle's config.json and applied by the runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmsrarec_edge.core.errors import UserError
from mmsrarec_edge.core.imaging import ImagePreprocess, config_preprocess, preprocess, read_processor_config

TOL = 2e-6  # float32 rounding of (x - mean) / std; the resize and crop are the same integer pixels


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth + noisy, so resampling filters differ visibly
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / w), (yy * 255 / h), ((xx + yy) * 127 / (w + h))], -1)
    arr = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _ours_vs_hf(processor, tmp_path, image) -> float:
    processor.save_pretrained(tmp_path)
    pre = read_processor_config(tmp_path)
    want = processor(images=image, return_tensors="np")["pixel_values"][0]
    got = pre(image)
    assert got.dtype == np.float32 and got.shape == want.shape
    return float(np.abs(got - want).max())


@pytest.mark.parametrize("kwargs, size", [
    ({}, (300, 200)),  # CLIP's defaults: shortest edge 224, center crop 224
    ({}, (180, 260)),  # upscaling, portrait
    ({"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}, (97, 61)),
    ({"size": {"shortest_edge": 336}, "crop_size": 336}, (500, 375)),  # LLaVA-1.5's tower
    ({"size": {"shortest_edge": 40}, "crop_size": 32, "resample": 2}, (64, 90)),  # bilinear
    ({"size": {"shortest_edge": 24}, "crop_size": 32}, (50, 30)),  # crop larger than the image: zero padding
    ({"size": {"height": 48, "width": 40}, "do_center_crop": False}, (77, 55)),
])
def test_clip_image_processor_pixels(tmp_path, kwargs, size):
    from transformers import CLIPImageProcessor

    assert _ours_vs_hf(CLIPImageProcessor(**kwargs), tmp_path, _image(*size)) <= TOL


@pytest.mark.parametrize("kwargs, size", [
    ({}, (300, 200)),  # SigLIP's defaults: 224 x 224, mean = std = 0.5, no crop
    ({"size": {"height": 64, "width": 64}}, (90, 45)),
    ({"size": {"height": 384, "width": 384}, "resample": 2}, (120, 200)),
])
def test_siglip_image_processor_pixels(tmp_path, kwargs, size):
    from transformers import SiglipImageProcessor

    assert _ours_vs_hf(SiglipImageProcessor(**kwargs), tmp_path, _image(*size, seed=1)) <= TOL


def test_old_integer_sizes_read_as_transformers_does(tmp_path):
    """Old CLIP configs give `size: 224` (the shortest edge) and `crop_size: 224`."""
    from transformers import CLIPImageProcessor

    d = {"image_processor_type": "CLIPImageProcessor", "size": 40, "crop_size": 32, "do_center_crop": True,
         "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.3], "resample": 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(d))
    pre = read_processor_config(tmp_path)
    assert pre.shortest_edge == 40 and pre.crop == (32, 32)
    img = _image(70, 51, seed=2)
    want = CLIPImageProcessor.from_pretrained(tmp_path)(images=img, return_tensors="np")["pixel_values"][0]
    assert np.abs(pre(img) - want).max() <= TOL


def test_default_square_is_the_legacy_preprocess_and_round_trips_through_transformers(tmp_path):
    """The embedded default's preprocessing (what every model got before it was recorded) is bit-identical to the
    old `preprocess`, and the preprocessor_config.json our checkpoints carry reads back the same in transformers."""
    from transformers import CLIPImageProcessor

    img = _image(90, 70, seed=3)
    pre = ImagePreprocess.square(64)
    assert np.array_equal(pre(img), preprocess(img, 64))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre.to_processor_config()))
    hf = CLIPImageProcessor.from_pretrained(tmp_path)
    assert np.abs(hf(images=img, return_tensors="np")["pixel_values"][0] - pre(img)).max() <= TOL
    assert read_processor_config(tmp_path) == pre
    assert ImagePreprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre


def test_checkpoint_preprocessing_reaches_the_bundle_config_and_the_runtime(tmp_path):
    """A checkpoint with SigLIP's preprocessor_config.json: load_mllm attaches it, the exporter writes it into the
    stage's config.json section, and the runtime's pixels from that section equal SiglipImageProcessor's."""
    from transformers import SiglipImageProcessor

    from mmsrarec_edge.exporter.bundle import MLLMInput, _mllm_config
    from mmsrarec_edge.models.mllm import (
        MLLMConfig,
        build_mllm,
        build_tokenizer,
        image_preprocess,
        load_mllm,
        save_mllm,
    )

    tok = build_tokenizer()
    save_mllm(build_mllm(MLLMConfig(vision="siglip", hidden_size=32, intermediate_size=64, num_layers=1), tok), tok,
              tmp_path / "m")
    assert read_processor_config(tmp_path / "m") == ImagePreprocess.square(64)  # ours carry their preprocessing
    hf = SiglipImageProcessor(size={"height": 64, "width": 64})
    hf.save_pretrained(tmp_path / "m")  # the checkpoint's own, as a SigLIP-tower model ships it
    model, tok = load_mllm(tmp_path / "m")
    assert image_preprocess(model).mean == (0.5, 0.5, 0.5)
    section = json.loads(json.dumps(_mllm_config(MLLMInput(model, tok), {}, "summarizer")))
    img = _image(120, 80, seed=4)
    got = config_preprocess({"summarizer": section}, "summarizer")(img)
    assert np.abs(got - hf(images=img, return_tensors="np")["pixel_values"][0]).max() <= TOL
    # an old bundle (top-level mean/std only) keeps its square resize
    old = config_preprocess({"image_preprocess": {"mean": [0.5] * 3, "std": [0.5] * 3},
                             "summarizer": {"image_size": 64}}, "summarizer")
    assert old == ImagePreprocess.square(64, [0.5] * 3, [0.5] * 3)


def test_a_preprocessor_the_tower_cannot_take_is_one_line(tmp_path):
    from transformers import SiglipImageProcessor

    from mmsrarec_edge.models.mllm import MLLMConfig, build_mllm, build_tokenizer, load_mllm, save_mllm

    tok = build_tokenizer()
    save_mllm(build_mllm(MLLMConfig(hidden_size=32, intermediate_size=64, num_layers=1), tok), tok, tmp_path / "m")
    SiglipImageProcessor(size={"height": 96, "width": 96}).save_pretrained(tmp_path / "m")
    with pytest.raises(UserError, match=r"gives \(96, 96\) pixels, the vision tower takes 64x64"):
        load_mllm(tmp_path / "m")
    (tmp_path / "m" / "preprocessor_config.json").write_text('{"size": {"longest_edge": 64}}')
    with pytest.raises(UserError, match="is not a size this toolkit applies"):
        load_mllm(tmp_path / "m")


@pytest.mark.parametrize("kwargs, size", [
    ({"size": {"height": 448, "width": 448}}, (300, 200)),  # InternVL3's tile (ImageNet mean/std as it ships)
    ({"size": {"height": 64, "width": 64}}, (90, 130)),
    ({"size": {"height": 64, "width": 64}, "resample": 2}, (40, 30)),  # upscaling, bilinear
    ({}, (500, 375)),  # GotOcr2ImageProcessor's own defaults: 384 x 384, CLIP mean/std
])
def test_internvl_image_processor_pixels(tmp_path, kwargs, size):
    """InternVL3's GotOcr2ImageProcessor with crop_to_patches off (one tile per image, the toolkit's fixed size)."""
    from transformers import GotOcr2ImageProcessor

    from mmsrarec_edge.core.imaging import IMAGENET_MEAN, IMAGENET_STD

    extra = {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)} if kwargs else {}
    hf = GotOcr2ImageProcessor(crop_to_patches=False, **extra, **kwargs)
    assert _ours_vs_hf(hf, tmp_path, _image(*size, seed=5)) <= TOL


@pytest.mark.parametrize("processor", ["Idefics3ImageProcessor", "SmolVLMImageProcessor"])
@pytest.mark.parametrize("kwargs, size", [
    ({"size": {"longest_edge": 256}, "max_image_size": {"longest_edge": 64}}, (300, 201)),  # odd side: rounded up
    ({"size": {"longest_edge": 256}, "max_image_size": {"longest_edge": 64}}, (61, 97)),  # portrait, upscaled
    ({"size": {"longest_edge": 2048}, "max_image_size": {"longest_edge": 512}}, (640, 480)),  # SmolVLM's sizes
    ({"do_resize": False, "max_image_size": {"longest_edge": 64}, "resample": 3}, (120, 80)),  # the tile resize only
    ({}, (5000, 100)),  # Idefics3's defaults (longest edge 1456, tile 364); a very flat image
])
def test_idefics3_image_processor_pixels(tmp_path, processor, kwargs, size):
    """SmolVLM / Idefics3 with do_image_splitting off: the aspect-keeping resize to size["longest_edge"] (the short
    side rounded up to even), then the square LANCZOS resize to the tile, mean = std = 0.5."""
    import transformers

    hf = getattr(transformers, processor)(do_image_splitting=False, **kwargs)
    hf.save_pretrained(tmp_path)
    pre = read_processor_config(tmp_path)
    img = _image(*size, seed=6)
    want = hf(images=img, return_tensors="np")["pixel_values"]
    assert want.shape[:2] == (1, 1)  # one image, one tile
    got = pre(img)
    assert got.shape == want[0, 0].shape and np.abs(got - want[0, 0]).max() <= TOL
    assert ImagePreprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    (tmp_path / "again").mkdir()  # what our checkpoints write reads back in transformers to the same pixels
    (tmp_path / "again" / "preprocessor_config.json").write_text(json.dumps(pre.to_processor_config()))
    again = getattr(transformers, processor).from_pretrained(tmp_path / "again")
    assert np.abs(again(images=img, return_tensors="np")["pixel_values"][0, 0] - got).max() <= TOL

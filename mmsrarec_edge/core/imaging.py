"""Image loading and preprocessing, shared by training and the torch-free runtime so both see identical pixels.

`ImagePreprocess` is the checkpoint's own preprocessing, read from its `preprocessor_config.json` (the transformers
image processor's settings: resize to a size or a shortest edge with a resampling filter, center crop, rescale,
normalise with the tower's mean/std) and applied in numpy + Pillow exactly as the transformers image processor does
(CLIPImageProcessor, SiglipImageProcessor, GotOcr2ImageProcessor (InternVL3) with `crop_to_patches` off,
Idefics3ImageProcessor / SmolVLMImageProcessor with `do_image_splitting` off: one tile per image; tests/
test_image_preprocess.py compares the pixels). Training and export
read it from the checkpoint; the bundle's config.json carries it (`image_preprocess`, and per stage
`<stage>.image_preprocess`) and the runtime applies it. A checkpoint without the file gets the embedded default's
(`ImagePreprocess.square`: bicubic resize to the tower's square size, CLIP's mean/std, no crop). Bad files (missing,
corrupt, huge) raise UserError with the path and the problem.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 64_000_000  # refuse decompression bombs well before PIL's own limit


def _too_large(path: Path, w: int, h: int) -> UserError:
    return UserError(f"image {path} is too large ({w}x{h} pixels, limit {MAX_PIXELS})", "downscale it first")


def load_image(path: Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise UserError(f"image {path} does not exist", "check the path")
    if not path.is_file():
        raise UserError(f"image {path} is not a file", "pass the path of a PNG/JPEG file")
    try:
        with warnings.catch_warnings():
            # PIL warns from 89M pixels and refuses from 179M; ours (64M) is lower, so its warning means too large
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise _too_large(path, w, h)
                im.load()
                return im.convert("RGB")
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        size = re.search(r"\((\d+) pixels\)", str(exc))
        raise UserError(f"image {path} is too large ({size.group(1) if size else 'too many'} pixels, limit "
                        f"{MAX_PIXELS})", "downscale it first") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"image {path} cannot be decoded ({type(exc).__name__}: {exc})",
                        "is it a valid PNG/JPEG file?") from exc


def preprocess(image: Image.Image, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """PIL image -> float32 [3, size, size], normalised."""
    im = image.convert("RGB").resize((size, size), Image.BICUBIC)
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# PIL's filter numbers, as transformers' PILImageResampling stores them in preprocessor_config.json
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_PIL_FILTER = {"nearest": Image.NEAREST, "lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR,
               "bicubic": Image.BICUBIC, "box": Image.BOX, "hamming": Image.HAMMING}
PREPROCESSOR_CONFIG = "preprocessor_config.json"
# transformers' defaults of the keys a preprocessor_config.json may leave out, per image processor class
_PROCESSOR_DEFAULTS = {
    "CLIPImageProcessor": {"size": {"shortest_edge": 224}, "do_center_crop": True, "crop_size": 224},
    "SiglipImageProcessor": {"size": {"height": 224, "width": 224}, "do_center_crop": False,
                             "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
    "GotOcr2ImageProcessor": {"size": {"height": 384, "width": 384}, "do_center_crop": False},  # InternVL3's
}
# Idefics3's processor (SmolVLM's is the same): an aspect-keeping resize of the longest edge to size["longest_edge"],
# then (do_image_splitting off) a square resize to max_image_size["longest_edge"], LANCZOS, mean = std = 0.5
IDEFICS_PROCESSORS = ("Idefics3ImageProcessor", "SmolVLMImageProcessor")
_IDEFICS_MAX_SIDE = 4096  # its MAX_IMAGE_SIZE


@dataclass(frozen=True)
class ImagePreprocess:
    """One vision tower's image preprocessing (the fields of a transformers image processor that decide its pixels).

    size: (height, width) for a fixed resize; shortest_edge: resize the shorter side to it, keeping the aspect ratio
    (the longer side int(shortest_edge * long / short), as transformers rounds it); crop: (height, width) of the center
    crop, None for none. longest_edge: Idefics3's first resize (the longer side to it, the other keeping the aspect
    ratio, rounded up to even), before the resize to `size`. Output: float32 [3, H, W]."""

    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    size: tuple[int, int] | None = None
    shortest_edge: int | None = None
    resample: str = "bicubic"
    crop: tuple[int, int] | None = None
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    longest_edge: int | None = None
    processor: str | None = field(default=None, compare=False)  # the transformers class it was read from

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        for name in ("size", "crop"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, (int(v[0]), int(v[1])))
        if self.resample not in _PIL_FILTER:
            raise UserError(f"unknown image resampling {self.resample!r}", f"known: {', '.join(sorted(_PIL_FILTER))}")
        if self.do_resize and self.size is None and self.shortest_edge is None:
            raise UserError("image preprocessing resizes but names no size", "give size or shortest_edge")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise UserError(f"image mean/std must be 3 values each (std non-zero), got {self.mean} / {self.std}")

    @classmethod
    def square(cls, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> "ImagePreprocess":
        """The embedded default's preprocessing: bicubic resize to size x size, mean/std, no crop."""
        return cls(mean=tuple(mean), std=tuple(std), size=(int(size), int(size)))

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of the pixels, when fixed (a crop, or a fixed resize without one)."""
        return self.crop or (self.size if self.do_resize and self.size else None)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("mean", "std", "size", "crop"):
            d[k] = None if d[k] is None else list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImagePreprocess":
        """What to_dict wrote (a bundle's config.json); an old bundle's {mean, std} needs `size` added by the caller."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_processor_config(cls, d: dict, where: str = PREPROCESSOR_CONFIG) -> "ImagePreprocess":
        """A transformers preprocessor_config.json (its dict) -> ImagePreprocess; transformers' own defaults for the
        keys it lacks (CLIP's: shortest-edge resize, center crop). A size it cannot express is one UserError."""
        kind = d.get("image_processor_type")
        base = str(kind or "").removesuffix("Fast")
        if base in IDEFICS_PROCESSORS:
            return cls._from_idefics(d, kind, where)
        d = {**_PROCESSOR_DEFAULTS.get(base, _PROCESSOR_DEFAULTS["CLIPImageProcessor"]), **d}

        def hw(v, key, square_int: bool):
            if isinstance(v, int) and not isinstance(v, bool):
                return ((v, v), None) if square_int else (None, v)
            if isinstance(v, dict) and "height" in v and "width" in v:
                return (int(v["height"]), int(v["width"])), None
            if isinstance(v, dict) and set(v) == {"shortest_edge"}:
                return None, int(v["shortest_edge"])
            raise UserError(f"{where}: {key} {v!r} is not a size this toolkit applies",
                            "supported: an integer, {height, width} or {shortest_edge}")

        size, shortest = hw(d["size"], "size", square_int=False)
        do_crop = bool(d.get("do_center_crop", False))
        crop = hw(d.get("crop_size"), "crop_size", square_int=True)[0] if do_crop else None
        mean, std = _mean_std(d, CLIP_MEAN, CLIP_STD)
        return cls(mean=mean, std=std, size=size, shortest_edge=shortest, resample=_resample(d, 3, where),
                   crop=crop, do_resize=bool(d.get("do_resize", True)), do_rescale=bool(d.get("do_rescale", True)),
                   rescale_factor=float(d.get("rescale_factor", 1 / 255)),
                   do_normalize=bool(d.get("do_normalize", True)), processor=kind)

    @classmethod
    def _from_idefics(cls, d: dict, kind: str, where: str) -> "ImagePreprocess":
        """Idefics3ImageProcessor / SmolVLMImageProcessor settings, read with do_image_splitting off: one tile of
        max_image_size x max_image_size per image (the toolkit's fixed resolution), whatever the file says."""
        def edge(key, default):
            v = d.get(key) or {"longest_edge": default}
            if not isinstance(v, dict) or set(v) != {"longest_edge"}:
                raise UserError(f"{where}: {key} {v!r} is not a size this toolkit applies",
                                "supported: {longest_edge}")
            return int(v["longest_edge"])

        tile, longest = edge("max_image_size", 364), edge("size", 4 * 364)
        mean, std = _mean_std(d, (0.5,) * 3, (0.5,) * 3)
        return cls(mean=mean, std=std, size=(tile, tile),
                   longest_edge=longest if d.get("do_resize", True) else None, resample=_resample(d, 1, where),
                   do_rescale=bool(d.get("do_rescale", True)), rescale_factor=float(d.get("rescale_factor", 1 / 255)),
                   do_normalize=bool(d.get("do_normalize", True)), processor=kind)

    def to_processor_config(self) -> dict:
        """The preprocessor_config.json a CLIPImageProcessor reads back to the same pixels (saved with our
        checkpoints, so every checkpoint carries its preprocessing); an Idefics3-style one as that processor's
        settings with do_image_splitting off."""
        inv = {v: k for k, v in RESAMPLE.items()}
        if str(self.processor or "").removesuffix("Fast") in IDEFICS_PROCESSORS:
            return {"image_processor_type": self.processor, "do_resize": self.longest_edge is not None,
                    "size": {"longest_edge": self.longest_edge or 4 * self.size[0]},
                    "max_image_size": {"longest_edge": self.size[0]}, "do_image_splitting": False,
                    "resample": inv[self.resample], "do_rescale": self.do_rescale,
                    "rescale_factor": self.rescale_factor, "do_normalize": self.do_normalize,
                    "image_mean": list(self.mean), "image_std": list(self.std), "do_pad": True,
                    "do_convert_rgb": True}
        size = {"shortest_edge": self.shortest_edge} if self.shortest_edge is not None else \
            {"height": self.size[0], "width": self.size[1]} if self.size else None
        return {"image_processor_type": self.processor or "CLIPImageProcessor", "do_resize": self.do_resize,
                "size": size, "resample": inv[self.resample], "do_center_crop": self.crop is not None,
                "crop_size": {"height": self.crop[0], "width": self.crop[1]} if self.crop else None,
                "do_rescale": self.do_rescale, "rescale_factor": self.rescale_factor,
                "do_normalize": self.do_normalize, "image_mean": list(self.mean), "image_std": list(self.std),
                "do_convert_rgb": True}

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after the resize, by transformers' get_resize_output_image_size."""
        if self.size is not None:
            return self.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def __call__(self, image: Image.Image) -> np.ndarray:
        im = image.convert("RGB")
        if self.do_resize and self.longest_edge:
            h, w = _idefics_size(im.height, im.width, self.longest_edge)
            im = im.resize((w, h), _PIL_FILTER[self.resample], reducing_gap=None)
        if self.do_resize:
            h, w = self.resized_size(*im.size)
            im = im.resize((w, h), _PIL_FILTER[self.resample], reducing_gap=None)
        x = np.asarray(im)  # [H, W, 3] uint8
        if self.crop is not None:
            x = _center_crop(x, *self.crop)
        if self.do_rescale:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.do_normalize:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _resample(d: dict, default: int, where: str) -> str:
    """A preprocessor_config's resample (PIL's integer code or a name) -> the name ImagePreprocess keeps."""
    resample = d.get("resample", default)
    if isinstance(resample, int):
        if resample not in RESAMPLE:
            raise UserError(f"{where}: unknown resample {resample}", f"known: {sorted(RESAMPLE)}")
        resample = RESAMPLE[resample]
    return str(resample)


def _mean_std(d: dict, mean, std) -> tuple[tuple, tuple]:
    """image_mean / image_std (one number for every channel, or one per channel), the processor's defaults."""
    m, s = d.get("image_mean", mean), d.get("image_std", std)
    return tuple([m] * 3 if isinstance(m, (int, float)) else m), tuple([s] * 3 if isinstance(s, (int, float)) else s)


def _idefics_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """Idefics3's get_resize_output_image_size: the longer side to `longest`, the other by the aspect ratio (int,
    then up to even), then both scaled under its 4096 maximum."""
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        height, width = longest, int(longest * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > _IDEFICS_MAX_SIDE:
        width, height = _IDEFICS_MAX_SIDE, int(_IDEFICS_MAX_SIDE / aspect)
    elif height > width and height > _IDEFICS_MAX_SIDE:
        height, width = _IDEFICS_MAX_SIDE, int(_IDEFICS_MAX_SIDE * aspect)
    return max(height, 1), max(width, 1)


def _center_crop(x: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """transformers' image_transforms.center_crop on an [H, W, C] array (zero padding when the crop is larger)."""
    h, w = x.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0:
        return x[top:top + ch, left:left + cw]
    nh, nw = max(ch, h), max(cw, w)
    out = np.zeros((nh, nw, x.shape[2]), x.dtype)
    tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    out[tp:tp + h, lp:lp + w] = x
    top, left = top + tp, left + lp
    return out[max(0, top):min(nh, top + ch), max(0, left):min(nw, left + cw)]


def read_processor_config(model_dir: Path) -> ImagePreprocess | None:
    """The checkpoint's preprocessor_config.json as ImagePreprocess; None when it has none."""
    path = Path(model_dir) / PREPROCESSOR_CONFIG
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})", "copy the checkpoint again") from exc
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a JSON object")
    return ImagePreprocess.from_processor_config(d, str(path))


def config_preprocess(config: dict, stage: str) -> ImagePreprocess:
    """A bundle's preprocessing for `stage` (its config.json): the stage's own `image_preprocess`, else the
    top-level {mean, std} of bundles exported before it was recorded, with a bicubic square resize to the stage's
    image_size."""
    conf = config.get(stage) or {}
    own = conf.get("image_preprocess")
    if isinstance(own, dict) and own:
        return ImagePreprocess.from_dict(own)
    top = config.get("image_preprocess") or {}
    if "size" in top or "shortest_edge" in top:
        return ImagePreprocess.from_dict(top)
    return ImagePreprocess.square(int(conf.get("image_size", 0)) or 1, top.get("mean", CLIP_MEAN),
                                  top.get("std", CLIP_STD))

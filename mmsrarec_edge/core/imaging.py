"""Image loading and preprocessing, shared by training and the torch-free runtime so both see identical pixels.

Images are resized (bicubic) to the vision tower's square size and normalised with the tower's mean/std. Bad files
(missing, corrupt, huge) raise UserError with the path and the problem.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
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

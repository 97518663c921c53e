"""Cold start: turn a freshly summarized item into a catalog row and add it to a bundle (`summarize-item
--add-to-catalog`).

The row gets what export time gives every catalog item: its keywords (text keywords, then the image keywords not
already among them -- the keyword store's order), the token ids of its candidate part when the catalog stores them
(built by the recommender's torch-free prompt builder, as the exporter does), and, when the catalog caches the
recommender's image features, the features of its image from the bundle's recommender.vision graph. The bundle is
then rewritten atomically and re-verified (runtime/catalog.py). Torch-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import BundleError, UserError
from ..core.imaging import config_preprocess, load_image
from .catalog import CatalogItem, add_item
from .sessions import SessionConfig, open_bundle_graph
from .summarizer import ItemSummary
from .tokenizer import Codec


def default_title(text: str, limit: int = 60) -> str:
    words = " ".join(text.split())
    head = words.split(". ")[0]
    return head if len(head) <= limit else head[: limit - 1].rstrip() + "…"


def recommender_image_features(manifest, cfg: SessionConfig, image) -> np.ndarray | None:
    """[n_image_tokens, H] from recommender.vision, or None when the bundle has no such graph."""
    if image is None or not manifest.has_graph("recommender.vision"):
        return None
    from .llm import ImageEncoder

    config = manifest.config()
    conf = config.get("recommender", {})
    size = int(conf.get("image_size", 0))
    if size < 1:
        raise BundleError("config.json: recommender.image_size is missing", "re-export the bundle")
    pil = load_image(Path(image)) if isinstance(image, (str, Path)) else image
    px = config_preprocess(config, "recommender")(pil)
    return ImageEncoder(open_bundle_graph(manifest, "recommender.vision", cfg))(px[None])[0]


def candidate_token_ids(manifest, title: str, has_image: bool, summary: ItemSummary) -> list[int] | None:
    """The candidate part's token ids by the recommender's prompt builder, as the exporter caches them; None when the
    suffix depends on the request (a rank-hint recommender builds it per request, as for every catalog item)."""
    from ..core import prompt as rp

    conf = manifest.config().get("recommender")
    if conf is None:
        return None
    codec = Codec(manifest.path(conf.get("tokenizer", "tokenizer.json")))
    ids = rp.candidate_ids(codec.encode, title, summary.keywords, has_image, conf)
    return None if ids is None else [int(t) for t in ids]


def add_summarized_item(manifest, cfg: SessionConfig, item_id: int, title: str | None, text: str,
                        summary: ItemSummary, image=None, sign_key=None) -> CatalogItem:
    """Add the summarized item to the bundle's catalog (re-signed with `sign_key`); returns the row written."""
    if int(item_id) < 0:
        raise UserError(f"item id must be >= 0, got {item_id}")
    text = " ".join((text or "").split())
    title = (title or "").strip() or default_title(text) or f"item {item_id}"
    from ..core.prompt import IMAGE_TOKEN

    if IMAGE_TOKEN in title:  # it would become an image slot of the recommender's prompt
        raise UserError(f"the item title {title!r} contains {IMAGE_TOKEN}, a token reserved for images",
                        "pass a --title without it")
    features = recommender_image_features(manifest, cfg, image)
    row = CatalogItem(int(item_id), title, list(summary.text_keywords), list(summary.image_keywords),
                      summary.keywords, image is not None,
                      candidate_token_ids(manifest, title, image is not None, summary))
    add_item(manifest.root, row, features, sign_key)
    return row

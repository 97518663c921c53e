"""The embedded default dataset: a deterministic synthetic multimodal catalog with sequential users.

Items have procedurally drawn images whose visible attributes carry meaning (category drawn as a silhouette, colour,
pattern, size) and descriptions generated from the same attributes plus text-only ones (material, style). Users have
latent tastes (category and colour preferences) and sequential dynamics (a category follows its "complement" and the
pattern tends to repeat), so both collaborative and sequential signals exist. Ground-truth attributes are kept in
`items.parquet` so that keyword quality can be scored. Everything is derived from one seed: redistributable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..core.errors import UserError
from .schema import Dataset, Item, save_dataset

CATEGORIES = {  # category -> silhouette
    "lamp": "triangle",
    "clock": "circle",
    "cushion": "square",
    "kite": "diamond",
    "badge": "star",
    "vase": "hexagon",
}
COLOURS = {
    "red": (210, 40, 40),
    "blue": (40, 80, 210),
    "green": (40, 160, 60),
    "yellow": (230, 200, 30),
    "purple": (140, 50, 170),
    "orange": (240, 130, 20),
    "black": (25, 25, 25),
    "pink": (240, 120, 180),
}
PATTERNS = ["solid", "striped", "dotted", "checked"]
SIZES = ["small", "large"]
MATERIALS = ["wood", "metal", "cotton", "glass", "plastic", "ceramic"]
STYLES = ["vintage", "modern", "rustic", "minimalist", "playful"]
BRANDS = ["Aurora", "Nimbus", "Kestrel", "Juniper", "Solace", "Vertex", "Marlow", "Tamsin", "Orchid", "Pebble",
          "Quill", "Harbor", "Lumen", "Cobalt", "Fable", "Willow"]
FILLERS = [
    "A thoughtful gift for friends and family.",
    "Easy to clean and built to last.",
    "Ships in recyclable packaging.",
    "Designed in a small studio.",
    "Fits well in any living room.",
    "Customers love its cheerful look.",
]


@dataclass
class SynthConfig:
    seed: int = 0
    n_items: int = 300
    n_users: int = 1000
    min_len: int = 12
    max_len: int = 40
    image_size: int = 64
    taste_concentration: float = 0.3  # Dirichlet alpha: lower = pickier users
    transition_strength: float = 2.5  # bonus for the complement of the previous category
    pattern_strength: float = 1.2  # bonus for repeating the previous pattern
    popularity_exponent: float = 0.8  # Zipf exponent of item popularity


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        angles, radii = [-90, 30, 150], [r] * 3
    elif shape == "square":
        angles, radii = [45, 135, 225, 315], [r * 1.2] * 4
    elif shape == "diamond":
        angles, radii = [0, 90, 180, 270], [r] * 4
    elif shape == "hexagon":
        angles, radii = list(range(0, 360, 60)), [r] * 6
    elif shape == "star":
        angles = list(range(-90, 270, 36))
        radii = [r if k % 2 == 0 else r * 0.45 for k in range(10)]
    else:
        raise ValueError(shape)
    return [(cx + rr * math.cos(math.radians(a)), cy + rr * math.sin(math.radians(a))) for a, rr in zip(angles, radii)]


def draw_item_image(category: str, colour: str, pattern: str, size: str, px: int = 64, seed: int = 0) -> Image.Image:
    """Draw one item: its category's silhouette, filled with its colour and pattern, small or large."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(225, 250, size=(px, px, 3), dtype=np.uint8)
    img = Image.fromarray(bg, "RGB")
    r = px * (0.22 if size == "small" else 0.40)
    cx, cy = px / 2 + rng.uniform(-2, 2), px / 2 + rng.uniform(-2, 2)
    mask = Image.new("L", (px, px), 0)
    md = ImageDraw.Draw(mask)
    shape = CATEGORIES[category]
    if shape == "circle":
        md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        md.polygon(_polygon(shape, cx, cy, r), fill=255)
    fill = Image.new("RGB", (px, px), COLOURS[colour])
    fd = ImageDraw.Draw(fill)
    accent = (255, 255, 255) if colour != "yellow" else (60, 60, 60)
    step = max(4, px // 10)
    if pattern == "striped":
        for x in range(-px, 2 * px, step):
            fd.line([(x, 0), (x + px, px)], fill=accent, width=max(1, step // 3))
    elif pattern == "dotted":
        for x in range(step // 2, px, step):
            for y in range(step // 2, px, step):
                fd.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=accent)
    elif pattern == "checked":
        for x in range(0, px, step):
            for y in range(0, px, step):
                if (x // step + y // step) % 2 == 0:
                    fd.rectangle([x, y, x + step - 1, y + step - 1], fill=accent)
    img.paste(fill, (0, 0), mask)
    return img


def _describe(rng: np.random.Generator, a: dict) -> str:
    templates = [
        "A {style} {category} made of {material}. It comes in {colour} with a {pattern} finish and a {size} size.",
        "This {size} {colour} {category} has a {pattern} look. {style_cap} design, crafted from {material}.",
        "{style_cap} {material} {category} in {colour}, {pattern}, {size}.",
    ]
    t = templates[int(rng.integers(len(templates)))]
    pattern = "plain" if a["pattern"] == "solid" and rng.random() < 0.5 else a["pattern"]
    text = t.format(style_cap=a["style"].capitalize(), **{**a, "pattern": pattern})
    return f"{text} {FILLERS[int(rng.integers(len(FILLERS)))]}"


def generate(cfg: SynthConfig, out_dir: Path, progress=None) -> Dataset:
    """Generate the catalog (images under out_dir/images) and the users' sequences, and save the dataset."""
    if cfg.n_items < 10 or cfg.n_users < 10:
        raise UserError(f"too small a catalog ({cfg.n_items} items, {cfg.n_users} users)", "use at least 10 of each")
    if not 2 <= cfg.min_len <= cfg.max_len:
        raise UserError(f"sequence lengths must satisfy 2 <= min_len <= max_len, got {cfg.min_len}..{cfg.max_len}")
    rng = np.random.default_rng(cfg.seed)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    cats, cols = list(CATEGORIES), list(COLOURS)
    combos = [(c, k, p, s) for c in cats for k in cols for p in PATTERNS for s in SIZES]
    pick = rng.choice(len(combos), size=min(cfg.n_items, len(combos)), replace=False)
    n = len(pick)
    items: dict[int, Item] = {}
    attr_idx = np.zeros((n, 3), dtype=np.int64)  # category, colour, pattern
    for k, ci in enumerate(pick):
        c, col, pat, size = combos[ci]
        a = {"category": c, "colour": col, "pattern": pat, "size": size,
             "material": MATERIALS[int(rng.integers(len(MATERIALS)))], "style": STYLES[int(rng.integers(len(STYLES)))]}
        iid = k + 1
        rel = f"images/{iid}.png"
        draw_item_image(c, col, pat, size, cfg.image_size, seed=cfg.seed * 100003 + iid).save(out_dir / rel)
        title = f"{BRANDS[int(rng.integers(len(BRANDS)))]} {c}"
        items[iid] = Item(iid, title, _describe(rng, a), rel, a)
        attr_idx[k] = (cats.index(c), cols.index(col), PATTERNS.index(pat))
        if progress:
            progress(1)

    # Popularity is a fixed Zipf draw over a random permutation, so it is independent of the attributes.
    log_pop = -cfg.popularity_exponent * np.log(rng.permutation(n) + 1.0)
    complement = {i: (i + 1) % len(cats) for i in range(len(cats))}  # lamp -> clock -> cushion -> ... -> lamp
    users, seq_items, stamps = [], [], []
    t0 = 1_700_000_000
    for u in range(1, cfg.n_users + 1):
        cat_pref = np.log(rng.dirichlet([cfg.taste_concentration] * len(cats)) + 1e-3)
        col_pref = np.log(rng.dirichlet([cfg.taste_concentration * 2] * len(cols)) + 1e-3)
        base = cat_pref[attr_idx[:, 0]] + col_pref[attr_idx[:, 1]] + log_pop
        length = min(int(rng.integers(cfg.min_len, cfg.max_len + 1)), n - 1)  # users never repeat an item
        seen = np.zeros(n, dtype=bool)
        prev = None
        t = t0 + int(rng.integers(0, 86_400 * 30))
        for _ in range(length):
            logits = base.copy()
            if prev is not None:
                logits += cfg.transition_strength * (attr_idx[:, 0] == complement[attr_idx[prev, 0]])
                logits += cfg.pattern_strength * (attr_idx[:, 2] == attr_idx[prev, 2])
            logits[seen] = -np.inf
            p = np.exp(logits - logits.max())
            p /= p.sum()
            nxt = int(rng.choice(n, p=p))
            seen[nxt] = True
            users.append(u)
            seq_items.append(nxt + 1)
            t += int(rng.integers(600, 86_400 * 3))
            stamps.append(t)
            prev = nxt
    ds = Dataset("synthetic", items, np.asarray(users, np.int64), np.asarray(seq_items, np.int64),
                 np.asarray(stamps, np.int64), root=out_dir, source=f"mmsrarec-edge synth seed={cfg.seed}",
                 meta={"synth_config": cfg.__dict__})
    save_dataset(ds, out_dir)
    return ds

"""The `train recommender` output directory, and scoring evaluation cases with it (PyTorch).

    DIR/model/           the LLaVA recommender (save_mllm: safetensors + tokenizer)
    DIR/recommender.json prompt config, retrieval settings, answer token ids, ablation flags, inputs' fingerprints,
                         the training users' fingerprint, the training log
    DIR/items.parquet    the recommender's view of the catalog: item_id, title, keywords (as prompted), has_image, image
    DIR/retrieval/       hnswlib index + tables (retrieval.py), absent with --no-retrieval
    DIR/sasrec/          a copy of the SASRec model whose embeddings query the index (and give the rank hint)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core import prompt as P
from ..core.context import ItemText, PromptMaker, SASRecRanks
from ..core.errors import UserError

META = "recommender.json"
FORMAT = "mmsrarec-recommender"
VERSION = 1


def write_items(path: Path, items: dict[int, ItemText], images: dict[int, str]) -> None:
    ids = sorted(items)
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "title": [items[i].title for i in ids],
                             "keywords": pa.array([items[i].keywords for i in ids], pa.list_(pa.string())),
                             "has_image": [bool(items[i].has_image) for i in ids],
                             "image": [images.get(i, "") for i in ids]}), path)


def read_items(path: Path) -> tuple[dict[int, ItemText], dict[int, str]]:
    t = pq.read_table(path).to_pydict()
    items = {int(i): ItemText(ti, list(k or []), bool(h))
             for i, ti, k, h in zip(t["item_id"], t["title"], t["keywords"], t["has_image"])}
    return items, {int(i): im for i, im in zip(t["item_id"], t["image"]) if im}


def sasrec_ranks(sasrec) -> SASRecRanks:
    return SASRecRanks(sasrec.item_ids, sasrec.net.item_emb.weight[1:].detach().float().numpy())


class RecommenderDir:
    def __init__(self, root: Path, meta: dict, model, tokenizer, sasrec, items: dict[int, ItemText],
                 images: dict[int, str], retrieval):
        self.root, self.meta, self.model, self.tokenizer, self.sasrec = Path(root), meta, model, tokenizer, sasrec
        self.items, self.images, self.retrieval = items, images, retrieval
        self.prompt_cfg = P.PromptConfig.from_dict(meta["prompt"])

    @classmethod
    def load(cls, path: Path) -> "RecommenderDir":
        from ..core.retrieval import RetrievalIndex
        from ..models.mllm import load_mllm
        from ..models.sasrec import SASRecModel

        path = Path(path)
        if not (path / META).is_file():
            raise UserError(f"{path} is not a recommender directory (no {META})",
                            "train one with `mmsrarec-edge train recommender`")
        meta = json.loads((path / META).read_text())
        if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
            raise UserError(f"{path / META}: unsupported format/version", "retrain with this version")
        model, tok = load_mllm(path / "model")
        retrieval = RetrievalIndex(path / "retrieval") if meta["retrieval"]["enabled"] else None
        items, images = read_items(path / "items.parquet")
        return cls(path, meta, model.float().eval(), tok, SASRecModel.load(path / "sasrec"), items, images, retrieval)

    def check_protocol(self, protocol) -> None:
        """Refuse a protocol whose validation/test users this recommender was trained on (that would leak)."""
        trained = set(self.meta["inputs"]["protocol"]["train_users"])
        leaked = trained & (set(protocol.val_users) | set(protocol.test_users))
        if leaked:
            raise UserError(f"{self.root} was trained on {len(leaked)} of this protocol's validation/test users "
                            f"(e.g. user {min(leaked)})",
                            "evaluate with the protocol it was trained with "
                            f"({self.meta['inputs']['protocol']['path']})")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_maker(self) -> PromptMaker:
        from ..models.mllm import num_image_tokens

        r = self.meta["retrieval"]
        return PromptMaker(self.items, self.encode, self.meta.get("bos_id"), self.prompt_cfg, self.retrieval,
                           r.get("items_per_neighbour"), r.get("k"),
                           sasrec_ranks(self.sasrec) if self.prompt_cfg.rank_hint else None,
                           num_image_tokens(self.model))

    def pixels(self):
        """item id -> preprocessed pixels (only when candidates carry their image)."""
        if not self.prompt_cfg.candidate_image:
            return None
        return load_item_pixels(self.meta["inputs"]["dataset"]["path"], self.images, self.model)

    def case_scorer(self, max_batch: int = 64, threads: int | None = None):
        import torch

        from .scoring import TorchScorer

        if threads:
            torch.set_num_threads(threads)
        maker, pix = self.prompt_maker(), self.pixels()
        scorer = TorchScorer(self.model, self.meta["yes_token_id"], self.meta["no_token_id"], self.meta["pad_id"],
                             max_batch)
        return lambda cases, progress=None: score_cases(scorer, maker, self.sasrec, cases, pix, progress)


def load_item_pixels(dataset_dir, images: dict[int, str], model) -> dict[int, np.ndarray]:
    from ..core.imaging import load_image
    from ..models.mllm import image_preprocess

    root, pre = Path(dataset_dir), image_preprocess(model)
    if not root.is_dir():
        raise UserError(f"dataset {root} (for the candidates' images) not found",
                        "the recommender was trained with candidate images: keep its dataset where it was")
    return {i: pre(load_image(root / rel)) for i, rel in images.items()}


def score_cases(scorer, maker: PromptMaker, sasrec, cases, pixels=None, progress=None) -> np.ndarray:
    """Shared-prefix scores of every case's saved candidates (float64 [N, C])."""
    emb = sasrec.user_embeddings(cases.prefixes)
    collab = maker.collab(emb, exclude=cases.user_id.tolist())
    out = np.zeros(cases.candidates.shape, np.float64)
    for r in range(len(cases)):
        cands = cases.candidates[r].tolist()
        prefix, suffixes = maker.case(cases.prefixes[r], emb[r], cands, collab=collab[r])
        pv = [pixels.get(c) if maker.image_tokens(c) else None for c in cands] if pixels is not None else None
        out[r] = scorer.score_shared(prefix, suffixes, pv)
        if progress:
            progress(1)
    return out

"""The content baseline with each item's keywords, with the same keyword sets shuffled across items, and with one unique
token per item (a pure item-to-item transition model); validation split. Usage: content_shuffle.py PROTOCOL STORE
"""
import json
import sys

import numpy as np

from mmsrarec_edge.core import metrics
from mmsrarec_edge.core.keyword_store import read_keyword_store
from mmsrarec_edge.data.protocol import load_protocol
from mmsrarec_edge.models.content import ContentBaseline, ContentConfig

p = load_protocol(sys.argv[1])
store = read_keyword_store(sys.argv[2])
kws = {i: r.keywords for i, r in store.items()}
ids = sorted(kws)
perm = np.random.default_rng(0).permutation(len(ids))
variants = {"keywords": kws, "shuffled across items": {i: kws[ids[perm[k]]] for k, i in enumerate(ids)},
            "one unique token per item": {i: [f"item{i}"] for i in ids}}
for name, kw in variants.items():
    cfg = ContentConfig(history_len=p.config.history_len, seed=p.config.seed)
    m = ContentBaseline(kw, p.items, cfg).fit(p.train_sequences())
    s = m.score(p.val.histories(5), p.val.candidates)
    r = metrics.summarize(s, p.val.user_id, n_boot=1)
    means = {k: round(100 * r[k]["mean"], 2) for k in ("HR@5", "NDCG@5", "AUC")}
    print(json.dumps({"store": sys.argv[2], "variant": name, **means, "weights": m.info["weights"]}), flush=True)

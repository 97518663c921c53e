"""Probe the recommender's training signal without the rank hint (issue 20, item 2; NOTES.md in results/recommender).

Prints the epoch's composition (rows, segments per task, yes share, loss-weight shares, the constant predictor's loss),
then trains with the pipeline's own windows, rows, loss and validation (no retrieval, no rank hint) and prints each
epoch's mean loss per task and validation metrics. Usage: WORK=DIR probe.py NAME [section.key=value ...] [keywords=PATH]
"""
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from mmsrarec_edge.recommend import pipeline as PL
from mmsrarec_edge.recommend.tasks import epoch_rows

W = Path(os.environ.get("WORK", "work/syn"))
cfg = PL.RecommenderConfig()
cfg.retrieval_enabled = False
cfg.prompt.rank_hint = False
cfg.train.patience = 99
kw = W / "kw_rl.parquet"
name = sys.argv[1]
for kv in sys.argv[2:]:
    k, v = kv.split("=")
    if k == "keywords":
        kw = Path(v)
        continue
    obj, attr = cfg, k
    if "." in k:
        part, attr = k.split(".")
        obj = getattr(cfg, part)
    cur = getattr(obj, attr)
    setattr(obj, attr, v in ("1", "True", "true") if isinstance(cur, bool) else type(cur)(v))
torch.set_num_threads(1)
inputs = PL.load_inputs(W / "data", W / "protocol", W / "sasrec", kw)
model, tok = PL.init_model(cfg)
tokens = PL.answer_tokens(tok)
maker = PL.prompt_maker(inputs, tok, model, None, cfg)
windows = PL.training_windows(inputs, maker, cfg, None, lambda label, total: PL._NullProgress())
rows = epoch_rows(windows, maker, inputs.universe, tokens.yes_id, tokens.no_id, tokens.eos_id, cfg.tasks, 0)
segs = [s for r in rows for s in r.segments]
tasks = Counter(s.task for s in segs)
w = {t: n * (1.0 if t == "rec" else cfg.train.aux_weight) for t, n in tasks.items()}
yes = sum(1 for s in segs if s.task == "rec" and s.target == [tokens.yes_id])
q = yes / tasks["rec"]  # the constant predictor's p(yes)
stats = {"variant": name, "rows": len(rows), "segments": dict(tasks), "yes_share_of_rec": yes / tasks["rec"],
         "loss_weight_share": {t: round(v / sum(w.values()), 3) for t, v in w.items()},
         "mean_row_tokens": float(np.mean([len(r) for r in rows])),
         "prior_rec_loss": float(-q * np.log(q) - (1 - q) * np.log(1 - q)),
         "example": tok.decode(rows[0].prefix + rows[0].segments[0].suffix)}
print(json.dumps(stats), flush=True)
t = time.perf_counter()
model, log = PL.train_model(model, windows, maker, inputs, tokens, None, cfg, lambda label, total: PL._NullProgress())
out = {"variant": name, "args": sys.argv[2:], "seconds": round(time.perf_counter() - t),
       "epochs": [{"epoch": e["epoch"], "loss": {k: round(v, 4) for k, v in e["loss"].items()}, "val": e["val"]}
                  for e in log["epochs"]]}
print(json.dumps(out), flush=True)

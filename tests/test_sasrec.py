import numpy as np
import torch

from mmsrarec_edge.core import metrics
from mmsrarec_edge.models.popularity import Popularity
from mmsrarec_edge.models.sasrec import SASRec, SASRecConfig, SASRecModel
from mmsrarec_edge.models.sasrec_train import SASRecTrainConfig, train_sasrec


def test_causal_and_padding_invariance():
    torch.manual_seed(0)
    net = SASRec(30, SASRecConfig(hidden=16, layers=2, heads=2, max_len=8, dropout=0.0)).eval()
    seq = torch.tensor([[0, 0, 0, 3, 5, 7, 9, 11]])
    h = net.encode(seq)
    changed = seq.clone()
    changed[0, -1] = 12  # a later item must not change earlier positions
    h2 = net.encode(changed)
    # positions 0-2 are padding; their outputs are never read
    assert torch.allclose(h[0, 3:-1], h2[0, 3:-1], atol=1e-6)
    assert not torch.allclose(h[0, -1], h2[0, -1])
    # what stands in the padded positions is ignored: padding rows cannot leak
    assert torch.isfinite(net.encode(torch.zeros(1, 8, dtype=torch.long))).all()


def test_popularity_counts_training_interactions():
    pop = Popularity({1: [10, 20, 10], 2: [10, 30]})
    assert pop.score(None, np.array([[10, 20, 30, 40]])).tolist() == [[3, 1, 1, 0]]


def test_training_beats_popularity_and_roundtrips(tiny_protocol, tmp_path):
    torch.set_num_threads(2)
    model, log = train_sasrec(tiny_protocol, SASRecConfig(hidden=32, max_len=20),
                              SASRecTrainConfig(epochs=40, patience=8, batch_size=32, lr=3e-3))
    assert log["best_epoch"] >= 1 and log["history"][0]["loss"] > log["history"][log["best_epoch"] - 1]["loss"]
    val = tiny_protocol.val
    sas = metrics.per_case(model.score(val.prefixes, val.candidates))
    pop = metrics.per_case(Popularity(tiny_protocol.train_sequences()).score(None, val.candidates))
    assert sas["AUC"].mean() > pop["AUC"].mean()
    emb = model.user_embeddings(val.prefixes[:5])
    assert emb.shape == (5, 32) and emb.dtype == np.float32
    model.save(tmp_path / "m")
    again = SASRecModel.load(tmp_path / "m")
    assert np.allclose(again.user_embeddings(val.prefixes[:5]), emb, atol=1e-6)
    assert np.allclose(again.score(val.prefixes, val.candidates), model.score(val.prefixes, val.candidates), atol=1e-5)
    assert not list((tmp_path / "m").glob("*.pt")) and not list((tmp_path / "m").glob("*.bin"))

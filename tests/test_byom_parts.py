"""Bring your own model, the parts: RecBole SASRec state dicts (same user embeddings as RecBole's module; pickle
refused), keyword files (CSV, JSONL), prompt templates, and the one line an unsupported architecture gets."""

from __future__ import annotations

import argparse
import copy
import json
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from mmsrarec_edge.core.errors import UserError


# ------------------------------------------------------------- RecBole's SASRec, written from its published layout
class RBMultiHeadAttention(nn.Module):
    def __init__(self, n_heads, hidden_size, layer_norm_eps):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = n_heads, hidden_size // n_heads
        self.all_head_size = hidden_size
        self.sqrt_attention_head_size = math.sqrt(self.attention_head_size)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.softmax = nn.Softmax(dim=-1)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def transpose_for_scores(self, x):
        return x.view(*x.size()[:-1], self.num_attention_heads, self.attention_head_size)

    def forward(self, input_tensor, attention_mask):
        q = self.transpose_for_scores(self.query(input_tensor)).permute(0, 2, 1, 3)
        k = self.transpose_for_scores(self.key(input_tensor)).permute(0, 2, 3, 1)
        v = self.transpose_for_scores(self.value(input_tensor)).permute(0, 2, 1, 3)
        scores = torch.matmul(q, k) / self.sqrt_attention_head_size + attention_mask
        ctx = torch.matmul(self.softmax(scores), v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(*ctx.size()[:-2], self.all_head_size)
        return self.LayerNorm(self.dense(ctx) + input_tensor)


class RBFeedForward(nn.Module):
    def __init__(self, hidden_size, inner_size, layer_norm_eps):
        super().__init__()
        self.dense_1 = nn.Linear(hidden_size, inner_size)
        self.dense_2 = nn.Linear(inner_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x):
        h = self.dense_1(x)
        h = h * 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))  # RecBole's gelu
        return self.LayerNorm(self.dense_2(h) + x)


class RBTransformerLayer(nn.Module):
    def __init__(self, n_heads, hidden_size, inner_size, layer_norm_eps):
        super().__init__()
        self.multi_head_attention = RBMultiHeadAttention(n_heads, hidden_size, layer_norm_eps)
        self.feed_forward = RBFeedForward(hidden_size, inner_size, layer_norm_eps)

    def forward(self, h, mask):
        return self.feed_forward(self.multi_head_attention(h, mask))


class RBTransformerEncoder(nn.Module):
    def __init__(self, n_layers, n_heads, hidden_size, inner_size, layer_norm_eps):
        super().__init__()
        layer = RBTransformerLayer(n_heads, hidden_size, inner_size, layer_norm_eps)
        self.layer = nn.ModuleList([copy.deepcopy(layer) for _ in range(n_layers)])

    def forward(self, h, mask):
        for layer in self.layer:
            h = layer(h, mask)
        return h


class RecBoleSASRecRef(nn.Module):
    """recbole.model.sequential_recommender.sasrec.SASRec in eval mode: right-padded item sequences, the user
    embedding gathered at item_seq_len - 1."""

    def __init__(self, n_items, hidden_size=32, n_layers=2, n_heads=2, inner_size=48, max_seq_length=12,
                 layer_norm_eps=1e-12):
        super().__init__()
        self.item_embedding = nn.Embedding(n_items, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_seq_length, hidden_size)
        self.trm_encoder = RBTransformerEncoder(n_layers, n_heads, hidden_size, inner_size, layer_norm_eps)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        for p in self.parameters():  # RecBole's init is N(0, 0.02); larger random weights make rows differ
            nn.init.normal_(p, std=0.3)

    def get_attention_mask(self, item_seq):
        mask = (item_seq != 0).unsqueeze(1).unsqueeze(2)
        mask = torch.tril(mask.expand((-1, -1, item_seq.size(-1), -1)))
        return torch.where(mask, 0.0, -10000.0)

    def forward(self, item_seq, item_seq_len):
        pos = torch.arange(item_seq.size(1), dtype=torch.long).unsqueeze(0).expand_as(item_seq)
        h = self.LayerNorm(self.item_embedding(item_seq) + self.position_embedding(pos))
        out = self.trm_encoder(h, self.get_attention_mask(item_seq))
        idx = (item_seq_len - 1).view(-1, 1, 1).expand(-1, -1, out.shape[-1])
        return out.gather(dim=1, index=idx).squeeze(1)


def _histories(n_items: int, max_len: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for r in range(12):
        n = max_len if r == 0 else int(rng.integers(1, max_len + 1))
        out.append(rng.choice(np.arange(1, n_items), size=n, replace=False).tolist())
    return out


def _recbole_embeddings(ref: RecBoleSASRecRef, hists, max_len: int) -> np.ndarray:
    seq = torch.zeros(len(hists), max_len, dtype=torch.long)
    for r, h in enumerate(hists):
        seq[r, :len(h)] = torch.tensor(h)
    with torch.no_grad():
        return ref(seq, torch.tensor([len(h) for h in hists])).numpy()


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pt-wrapped"])
def test_recbole_state_dict_gives_recbole_user_embeddings(tmp_path, fmt):
    from safetensors.torch import save_file

    from mmsrarec_edge.models.sasrec import SASRecModel
    from mmsrarec_edge.recommend.byom import load_sasrec

    torch.manual_seed(0)
    ref = RecBoleSASRecRef(n_items=30, n_heads=4).eval()
    sd = ref.state_dict()
    path = tmp_path / ("sasrec.safetensors" if fmt == "safetensors" else "sasrec.pt")
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd if fmt == "pt" else {"state_dict": sd, "epoch": 3}, str(path))
    # RecBole's internal ids 1..29 are item ids 101..129 here
    (tmp_path / "ids.json").write_text(json.dumps(["[PAD]", *[str(100 + k) for k in range(1, 30)]]))
    model = load_sasrec(path, tmp_path / "ids.json", heads=4)
    hists = _histories(30, 12)
    want = _recbole_embeddings(ref, hists, 12)
    got = model.user_embeddings([[100 + i for i in h] for h in hists])
    assert np.abs(got - want).max() < 1e-5 * max(1.0, np.abs(want).max())
    # saved and reloaded as our directory ("sasrec-recbole"), the same model
    model.save(tmp_path / "dir")
    again = SASRecModel.load(tmp_path / "dir")
    assert np.array_equal(again.user_embeddings([[100 + i for i in h] for h in hists]), got)
    assert torch.equal(again.net.item_emb.weight, sd["item_embedding.weight"])
    assert set(again.net.state_dict()) == set(sd)  # RecBole's key names, kept


def test_recbole_user_encoder_exports_within_the_fp32_gate(tmp_path):
    """The RecBole-layout SASRec exports through the same user-encoder kind and parity gate as ours."""
    from dataclasses import replace

    from mmsrarec_edge.core.config import PROFILES_DIR
    from mmsrarec_edge.exporter.bundle import ExportInputs, export_graphs
    from mmsrarec_edge.exporter.profile import load_profile
    from mmsrarec_edge.recommend.byom import load_sasrec

    torch.manual_seed(1)
    ref = RecBoleSASRecRef(n_items=25).eval()
    torch.save(ref.state_dict(), str(tmp_path / "s.pt"))
    model = load_sasrec(tmp_path / "s.pt")
    prof = load_profile(PROFILES_DIR / "cpu-fp32.toml")
    prof = replace(prof, graphs=["sasrec.user_encoder"], parity=replace(prof.parity, cases=2))
    (tmp_path / "b").mkdir()
    (tmp_path / "s").mkdir()
    graphs = export_graphs(ExportInputs(sasrec=model), prof, tmp_path / "b", tmp_path / "s")
    res = graphs["sasrec.user_encoder"]["variants"]["fp32"]["parity"]
    assert res["passed"] and res["metrics"]["features"] <= 1e-4


def test_pickle_is_refused_in_one_line(tmp_path):
    from mmsrarec_edge.recommend.byom import load_sasrec

    torch.manual_seed(0)
    sd = RecBoleSASRecRef(n_items=10).state_dict()
    # RecBole's own checkpoint format keeps its Config object beside the weights: unpickling it could run code
    torch.save({"state_dict": sd, "config": argparse.Namespace(model="SASRec")}, str(tmp_path / "recbole.pth"))
    with pytest.raises(UserError, match="needs pickle to load, which can run code, so it is refused") as e:
        load_sasrec(tmp_path / "recbole.pth")
    assert "\n" not in str(e.value) and "state_dict()" in e.value.hint
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"item_embedding.weight": np.zeros((3, 4))}, f)
    with pytest.raises(UserError) as e:
        load_sasrec(tmp_path / "plain.pkl")
    assert "\n" not in str(e.value)
    # not RecBole's keys: named
    torch.save({"weight": torch.zeros(2)}, str(tmp_path / "other.pt"))
    with pytest.raises(UserError, match="not a RecBole SASRec state dict"):
        load_sasrec(tmp_path / "other.pt")


# ------------------------------------------------------------- keyword files
def test_keyword_files_csv_and_jsonl(tmp_path):
    from mmsrarec_edge.core.keyword_store import read_keyword_store
    from mmsrarec_edge.data.keyword_files import import_keywords, read_keyword_file

    (tmp_path / "k.csv").write_text('item_id,image_keywords,text_keywords\n1,red;round,"wool, warm"\n2,,cotton\n')
    rows = {r.item_id: r for r in read_keyword_file(tmp_path / "k.csv")}
    assert rows[1].image_keywords == ["red", "round"] and rows[1].text_keywords == ["wool", "warm"]
    assert rows[1].has_image and not rows[2].has_image and rows[2].text_keywords == ["cotton"]
    (tmp_path / "k.jsonl").write_text('{"item_id": 1, "image_keywords": ["red"], "text_keywords": "a, b"}\n\n'
                                      '{"item_id": 3, "keywords": ["c"], "has_image": true}\n')
    store = read_keyword_store(import_keywords(tmp_path / "k.jsonl", tmp_path / "k.parquet"))
    assert store[1].keywords == ["a", "b", "red"] and store[3].has_image and store[3].text_keywords == ["c"]
    bad = {"b1.csv": ("item_id,text_keywords\n1,a\nx,b\n", "b1.csv, line 3: item_id must be an integer"),
           "b2.jsonl": ('{"item_id": 1, "text_keywords": ["a"]}\n{nope\n', "b2.jsonl, line 2: not valid JSON"),
           "b3.csv": ("id,text_keywords\n1,a\n", "no item_id column"),
           "b4.jsonl": ('{"item_id": 1, "text_keywords": [1]}\n', "line 1: text_keywords must be a list of strings"),
           "b5.csv": ("item_id,text_keywords\n1,a\n1,b\n", "duplicate item_id 1"),
           "b6.txt": ("x", "unknown keyword file type .txt")}
    for name, (text, msg) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=msg):
            read_keyword_file(tmp_path / name)
    (tmp_path / "latin.csv").write_bytes(b"item_id,text_keywords\n1,caf\xe9\n")
    with pytest.raises(UserError, match="not valid UTF-8"):
        read_keyword_file(tmp_path / "latin.csv")


# ------------------------------------------------------------- prompt templates
TEMPLATE = '''
prefix = "History: {history}. Similar users chose: {collaborative}. Candidate:"
suffix = " {title} ({keywords}){image} rank {rank}. Buy it?"
answer_words = ["yes", "no"]
chat = "chatml"
system = "You recommend items."
keyword_separator = " / "
[settings]
history_len = 2
candidate_keywords = 2
'''


def test_template_renders_with_chat_wrapping_and_keeps_the_split(tmp_path):
    from mmsrarec_edge.core import prompt as P
    from mmsrarec_edge.core.prompt_template import load_template
    from mmsrarec_edge.recommend.byom import ImportSpec, prompt_config

    (tmp_path / "t.toml").write_text(TEMPLATE)
    t = load_template(tmp_path / "t.toml")
    spec = ImportSpec(model=tmp_path, sasrec=tmp_path, keywords=tmp_path, dataset=tmp_path, out=tmp_path,
                      template=tmp_path / "t.toml")
    cfg = prompt_config(spec, t)
    assert cfg.rank_hint and cfg.candidate_image and cfg.history_len == 2
    cfg = P.PromptConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))  # as config.json carries it
    prefix = P.prefix_text([["a", "b"], ["c"], ["d;e"]], [], cfg)
    assert prefix == ("<|im_start|>system\nYou recommend items.<|im_end|>\n<|im_start|>user\n"
                      "History: c ; d,e. Similar users chose: none. Candidate:")
    suffix = P.suffix_text("Lamp <image>", ["green", "glass", "x"], 2, 41, cfg)  # 0-based rank 41: "42"
    assert suffix == (" Lamp (green / glass) <image> <image> rank 42. Buy it?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert P.suffix_ids(lambda s: [len(s)], "Lamp", [], 0, 3, cfg) == [len(P.suffix_text("Lamp", [], 0, 3, cfg))]


@pytest.mark.parametrize("text, msg", [
    ('prefix = "{history} {title}"\nsuffix = "x"',
     r"prefix has an unknown slot \{title\} \(it belongs in the suffix\)"),
    ('prefix = "x"\nsuffix = "{nope}"', r"suffix has an unknown slot \{nope\}"),
    ('prefix = "x {"\nsuffix = "y"', "malformed template"),
    ('prefix = "x"\nsuffix = "y"\nchat = "llama9"', "unknown chat 'llama9'"),
    ('prefix = "x"\nsuffix = "y"\nanswer_words = ["yes"]', "answer_words must be two different"),
    ('prefix = "x"\nsuffix = "y"\ncolour = 1', "unknown key 'colour'"),
    ('suffix = "y"', "prefix must be a non-empty string"),
])
def test_template_errors_are_one_line(tmp_path, text, msg):
    from mmsrarec_edge.core.prompt_template import load_template

    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(UserError, match=msg) as e:
        load_template(tmp_path / "t.toml")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------- unsupported architecture
def test_unsupported_architecture_is_one_line_listing_the_supported(tmp_path):
    from mmsrarec_edge.models.mllm import load_mllm

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_omni",
                                                      "architectures": ["Qwen3OmniForConditionalGeneration"]}))
    with pytest.raises(UserError) as e:
        load_mllm(tmp_path)
    line = str(e.value)
    assert "unsupported architecture 'qwen3_omni' (Qwen3OmniForConditionalGeneration)" in line
    assert "supported: llava (LlavaForConditionalGeneration" in line and "\n" not in line

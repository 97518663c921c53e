"""Bring your own model end to end, as a user runs it (subprocess CLI): a LoRA adapter trained with peft on the
embedded default, a prompt template with chat wrapping, a RecBole SASRec state dict and a CSV keyword file go through
`import-model`, `export` (every graph parity-gated) and `recommend`; the scores equal the merged PyTorch model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_byom_parts import RecBoleSASRecRef

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TEMPLATE = '''
prefix = "recent items : {history} . people like this user then chose : {collaborative} . candidate :"
suffix = " {title} : {keywords}{image} . will the user choose it ? answer :"
answer_words = ["yes", "no"]
chat = "chatml"
system = "you recommend items ."
[settings]
history_len = 4
'''

PROFILE = '''name = "byom"
precision = "fp32"
graphs = ["recommender.embed", "recommender.decoder", "recommender.scorer", "sasrec.user_encoder"]
exporter = "legacy"
[parity]
cases = 1
'''


def run_cli(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MMSRAREC_QUIET": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmsrarec_edge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def parts(tiny_synth, tmp_path_factory):
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from mmsrarec_edge.models.mllm import MLLMConfig, build_mllm, build_tokenizer, save_mllm
    from mmsrarec_edge.models.training import add_lora

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("byom")
    tok = build_tokenizer()
    base = build_mllm(MLLMConfig(), tok)  # the embedded default
    save_mllm(base, tok, root / "base")
    # a LoRA adapter trained with peft: a few AdamW steps on yes/no answers (lora_B starts at 0: training moves it)
    yes, no = tok.convert_tokens_to_ids(["yes", "no"])
    lora = add_lora(base, r=4, alpha=16)
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=2e-2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (8, 16), generator=g)
    target = torch.tensor([yes, no] * 4)
    for _ in range(4):
        loss = F.cross_entropy(lora(input_ids=ids).logits[:, -1], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    lora.save_pretrained(root / "adapter")
    merged = lora.merge_and_unload().eval()
    # a RecBole SASRec (state dict, RecBole's key names) over the catalog: internal id k <-> k-th item id
    items = sorted(tiny_synth.items)
    torch.manual_seed(0)
    rb = RecBoleSASRecRef(n_items=len(items) + 1, hidden_size=32, max_seq_length=10).eval()
    save_file({k: v.contiguous() for k, v in rb.state_dict().items()}, str(root / "sasrec.safetensors"))
    (root / "item_ids.json").write_text(json.dumps(["[PAD]", *map(str, items)]))
    # keywords from elsewhere, as CSV
    lines = ["item_id,image_keywords,text_keywords"]
    for i in items:
        a = tiny_synth.items[i].attributes
        lines.append(f'{i},{a["colour"]};{a["pattern"]},"{a["category"]}, {a["material"]}"')
    (root / "keywords.csv").write_text("\n".join(lines) + "\n")
    (root / "template.toml").write_text(TEMPLATE)
    (root / "profile.toml").write_text(PROFILE)
    return root, merged, (yes, no)


@pytest.fixture(scope="module")
def bundle(parts, tiny_synth):
    root, _, _ = parts
    r = run_cli("import-model", "--model", root / "base", "--adapter", root / "adapter", "--template",
                root / "template.toml", "--sasrec", root / "sasrec.safetensors", "--sasrec-item-ids",
                root / "item_ids.json", "--keywords", root / "keywords.csv", "--dataset", tiny_synth.root,
                "--out", root / "rec")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sasrec"] == "recbole"
    r = run_cli("export", "--profile", root / "profile.toml", "--recommender", root / "rec", "--dataset",
                tiny_synth.root, "--out", root / "bundle", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "parity sasrec.user_encoder [fp32]" in r.stdout and "parity recommender.scorer [fp32]" in r.stdout
    return root / "bundle"


def test_lora_import_export_recommend_equals_the_merged_model(parts, bundle, tiny_synth):
    from runtime_support import torch_yes_probability

    from mmsrarec_edge.core.bundle import load_manifest
    from mmsrarec_edge.core.imaging import load_image
    from mmsrarec_edge.models.mllm import image_preprocess, load_mllm
    from mmsrarec_edge.runtime.recommender import Recommender

    root, merged, (yes, no) = parts
    seq = max(tiny_synth.sequences().values(), key=len)
    history, cands = seq[-6:-1], [i for i in sorted(tiny_synth.items) if i not in seq][:6]
    r = run_cli("recommend", bundle, "--history", ",".join(map(str, history)), "--candidates",
                ",".join(map(str, cands)), "--top-k", "6", "--json")
    assert r.returncode == 0, r.stderr
    got = {d[0] if isinstance(d, list) else d["item_id"]: d[1] if isinstance(d, list) else d["score"]
           for d in json.loads(r.stdout)["scored"]}
    # the same request's exact prompt (the runtime's own builder), scored by the merged PyTorch model
    case = Recommender(bundle).build_case(history=history, candidates=cands)
    text = load_mllm(root / "rec" / "model")[1].decode(case.prefix)
    assert "im _ start" in text.replace("|", " ").replace("<", " ").replace(">", " ") or "im_start" in text
    pre = image_preprocess(merged)
    base, _ = load_mllm(root / "base")
    diffs = []
    for c, suffix in zip(case.candidates, case.suffixes):
        item = tiny_synth.items[c]
        px = pre(load_image(tiny_synth.image_path(c)))[None] if item.image else None
        ref = torch_yes_probability(merged, case.prefix + suffix, px, yes, no)
        assert got[c] == pytest.approx(ref, rel=1e-4, abs=1e-6)
        diffs.append(abs(ref - torch_yes_probability(base, case.prefix + suffix, px, yes, no)))
    assert max(diffs) > 1e-3  # the adapter changed the scores: the merge is what was measured
    man = load_manifest(bundle)
    imported = man.data["sources"]["imported"]["recommender"]
    assert imported["adapter"]["r"] == 4 and imported["adapter"]["merged_with"] == "merge_and_unload"
    assert len(imported["adapter"]["sha256"]) == 64 and imported["sasrec"]["layout"] == "recbole"
    conf = man.config()["recommender"]
    assert conf["prompt"]["template"]["chat"]["user_start"] == "<|im_start|>user\n"
    assert conf["prompt"]["candidate_image"] and "import" not in conf  # local paths stay out of config.json


def test_import_errors_are_one_line(parts, tiny_synth, tmp_path):
    root, _, _ = parts
    (tmp_path / "vl").mkdir()
    (tmp_path / "vl" / "config.json").write_text('{"model_type": "blip-2"}')
    args = ["--sasrec", root / "sasrec.safetensors", "--keywords", root / "keywords.csv", "--dataset",
            tiny_synth.root, "--out", tmp_path / "out"]
    torch.save({"state_dict": {}, "config": np.dtype("float32")}, str(tmp_path / "pickled.pth"))
    cases = [
        (["--model", tmp_path / "vl"], "unsupported architecture 'blip-2'"),
        (["--model", root / "base", "--sasrec", tmp_path / "pickled.pth"], "needs pickle to load"),
        (["--model", root / "base", "--adapter", tmp_path], "is not a peft adapter directory"),
    ]
    for extra, msg in cases:
        r = run_cli("import-model", *args, *extra)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert not (tmp_path / "out").exists()
    assert "supported: llava" in run_cli("import-model", *args, "--model", tmp_path / "vl").stderr

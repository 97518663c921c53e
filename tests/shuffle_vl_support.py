"""Shared checks of the pixel-shuffle VLM families (InternVL3, SmolVLM / Idefics3) on tiny random models built from
transformers' config classes: export with every fp32 gate, the runtime's ranking against PyTorch's full forward with
pixels, summarize-item with an image against PyTorch's greedy loop, and the checkpoint round trip. Also the CLI
path (train recommender --init, export, recommend). Used by tests/test_families_internvl.py and
tests/test_families_smolvlm.py (one family per module)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from mmsrarec_edge.models import families as F

GRAPHS = ["summarizer.vision", "summarizer.embed", "summarizer.decoder", "recommender.vision", "recommender.embed",
          "recommender.decoder", "recommender.scorer"]


def build(family: str, seed: int = 0, **kw):
    from mmsrarec_edge.models.mllm import build_tokenizer

    torch.set_num_threads(1)
    tok = build_tokenizer()
    m = F.build_shuffle_vl(F.ShuffleVLConfig(family=family, seed=seed, **kw), tok)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger than the init, so candidates and generations differ visibly
        for p in F.language_model(m).layers.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m, tok


def image(rng, w: int = 90, h: int = 70) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def with_image(m, ids: list[int], at: int) -> list[int]:
    return ids[:at] + [F.image_token_id(m)] * F.num_image_tokens(m) + ids[at:]


def export(m, tok, out):
    from mmsrarec_edge.core.summary_prompts import PromptSpec
    from mmsrarec_edge.exporter.bundle import ExportInputs, MLLMInput, export_bundle
    from mmsrarec_edge.exporter.profile import ExportProfile

    spec = PromptSpec(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, image_token_id=F.image_token_id(m),
                      num_image_tokens=F.num_image_tokens(m), bos_id=tok.bos_token_id, **F.image_wrap(m))
    yes_no = (tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))
    inputs = ExportInputs(summarizer=MLLMInput(m, tok, {"prompt_spec": spec.to_dict(), "max_new_tokens": 6}),
                          recommender=MLLMInput(m, tok), yes_no_ids=yes_no)
    return export_bundle(inputs, ExportProfile(graphs=list(GRAPHS)), out), yes_no


def check_gates(m, family, out, manifest) -> None:
    assert set(manifest["graphs"]) == set(GRAPHS) and not manifest["graphs_skipped"]
    for name, entry in manifest["graphs"].items():
        parity = entry["variants"]["fp32"]["parity"]
        assert parity["passed"] and all(v <= 1e-4 for v in parity["metrics"].values()), (name, parity)
    s = F.image_size(m)
    assert manifest["graphs"]["recommender.vision"]["inputs"][0]["shape"] == ["images", 3, s, s]
    conf = json.loads((out / "config.json").read_text())
    for stage in ("summarizer", "recommender"):
        assert conf[stage]["family"] == family and "rope" not in conf[stage]
        assert conf[stage]["num_image_tokens"] == F.num_image_tokens(m) and conf[stage]["image_size"] == s


def _sessions(out):
    from mmsrarec_edge.runtime.llm import Decoder, Embedder, ImageEncoder, SuffixScorer
    from mmsrarec_edge.runtime.sessions import SessionConfig, open_session

    cfg = SessionConfig("cpu", threads=1)
    conf = json.loads((out / "config.json").read_text())["recommender"]
    rec = out / "recommender"
    return (ImageEncoder(open_session(rec / "vision.onnx", cfg)),
            Embedder(open_session(rec / "embed.onnx", cfg), conf["image_token_id"]),
            Decoder(open_session(rec / "decoder.onnx", cfg)), SuffixScorer(open_session(rec / "scorer.onnx", cfg)))


def check_ranking(m, tok, out, yes_no) -> None:
    """Generated cases: a history prefix holding an image, candidates with and without one; the runtime's scores
    (vision graph features spliced over the image slots, pixels from the bundle's preprocessing) on every scoring
    path equal PyTorch's full forward of each whole prompt with its pixels, and so does the ranking."""
    from mmsrarec_edge.core.imaging import config_preprocess
    from mmsrarec_edge.models.mllm import image_preprocess
    from mmsrarec_edge.runtime.scorer import CandidateScorer

    yes, no = yes_no
    vision, embedder, decoder, scorer_graph = _sessions(out)
    pre = config_preprocess(json.loads((out / "config.json").read_text()), "recommender")
    assert pre == image_preprocess(m)
    rng = np.random.default_rng(3)
    for case in range(2):
        prefix_img, imgs = image(rng, 120, 80), [image(rng, 60 + 20 * c, 90) for c in range(3)]
        prefix = with_image(m, rng.integers(1000, 29000, size=12 + 6 * case).tolist(), 4)
        suffixes, pixels = [], []
        for c in range(6):
            s = rng.integers(1000, 29000, size=int(rng.integers(2, 8))).tolist()
            if c % 2 == 0:
                s = with_image(m, s, int(rng.integers(0, len(s))))
            suffixes.append(s + [tok.convert_tokens_to_ids(":")])
            pixels.append(pre(imgs[c // 2]) if c % 2 == 0 else None)
        pre_px = pre(prefix_img)
        pre_feat = [vision(pre_px[None])[0]]
        feats = [None if px is None else [vision(px[None])[0]] for px in pixels]
        with torch.no_grad():
            want = []
            for s, px in zip(suffixes, pixels):
                stack = np.stack([pre_px] + ([px] if px is not None else []))
                logits = m(input_ids=torch.tensor([prefix + s]), **F.image_inputs(m, stack)).logits[0, -1].double()
                want.append(float(torch.sigmoid(logits[yes] - logits[no])))
        want = np.array(want)
        for path in ("suffix-scorer", "expanded-kv"):
            sc = CandidateScorer(decoder, embedder, tok.pad_token_id, max_batch=4,
                                 suffix_scorer=scorer_graph if path == "suffix-scorer" else None)
            assert sc.path == path
            got = sc.score(prefix, suffixes, pre_feat, feats)  # 6 candidates in chunks of 4: the KV is reused
            np.testing.assert_allclose(got, want, atol=1e-5)
            assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-want, kind="stable"))
        naive = CandidateScorer(decoder, embedder, tok.pad_token_id).score_naive(prefix, suffixes, pre_feat, feats)
        np.testing.assert_allclose(naive, want, atol=1e-5)
        assert want.std() > 1e-3  # the candidates' scores differ: the order is a real check


def check_summarize(m, tok, out) -> None:
    """summarize-item with an image (the runtime's preprocessing, vision graph, greedy loop) gives PyTorch's greedy
    keywords (the model's own preprocessing, transformers' forward over the whole sequence each step)."""
    from mmsrarec_edge.core.bundle import load_manifest
    from mmsrarec_edge.models.mllm import image_preprocess
    from mmsrarec_edge.runtime.sessions import SessionConfig
    from mmsrarec_edge.runtime.summarizer import load_item_summarizer

    summarizer = load_item_summarizer(load_manifest(out), SessionConfig("cpu", threads=1))
    img = image(np.random.default_rng(5), 100, 64)
    assert summarizer.rope is None and summarizer.spec.num_image_tokens == F.num_image_tokens(m)
    assert_greedy_like_pytorch(m, tok, summarizer, img, image_preprocess(m)(img)[None])


def assert_greedy_like_pytorch(m, tok, summarizer, img, pixels) -> None:
    """The runtime summarizer's image and text outputs and keywords equal PyTorch's greedy decoding (the whole
    sequence each step, transformers' own positions) of the same prompts; `pixels`: the model's preprocessing of
    `img`. Shared by every family's summarize-item test."""
    from mmsrarec_edge.core.keywords import parse_keywords
    from mmsrarec_edge.core.summary_prompts import (
        completion_until_eos,
        image_prompt_ids,
        suppressed_token_ids,
        text_prompt_ids,
    )

    spec, text = summarizer.spec, "a red cotton shirt with long sleeves"
    got = summarizer.summarize(image=img, text=text)
    encode = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    suppressed = suppressed_token_ids(spec)
    for task, ids, px in (("image", image_prompt_ids(encode, spec), pixels),
                          ("text", text_prompt_ids(encode, spec, text), None)):
        ids, new = list(ids), []
        with torch.no_grad():
            for _ in range(summarizer.max_new_tokens):
                logits = m(input_ids=torch.tensor([ids]), **F.image_inputs(m, px)).logits[0, -1]
                logits[suppressed] = -float("inf")
                t = int(logits.argmax())
                new.append(t)
                ids.append(t)
                if t == spec.eos_id:
                    break
        decoded = tok.decode(completion_until_eos(new, spec.eos_id))
        assert getattr(got, f"{task}_output") == decoded
        assert getattr(got, f"{task}_keywords") == parse_keywords(decoded, max_keywords=summarizer.max_keywords)
    assert got.image_output != got.text_output


def check_round_trip(m, tok, tmp_path, processor_cls) -> None:
    """save_mllm -> load_mllm gives the same family, geometry and preprocessing; the preprocessor_config.json the
    checkpoint carries reads back in transformers' own image processor to the same pixels as ours."""
    from mmsrarec_edge.models.mllm import image_preprocess, load_mllm, save_mllm

    save_mllm(m, tok, tmp_path / "ckpt")
    loaded, tok2 = load_mllm(tmp_path / "ckpt")
    assert type(loaded) is type(m) and F.family_of(loaded) == F.family_of(m)
    assert F.num_image_tokens(loaded) == F.num_image_tokens(m) and image_preprocess(loaded) == image_preprocess(m)
    assert tok2.convert_tokens_to_ids("<image>") == F.image_token_id(loaded)
    hf = processor_cls.from_pretrained(tmp_path / "ckpt")
    img = image(np.random.default_rng(7), 150, 97)
    want = np.asarray(hf(images=img, return_tensors="np")["pixel_values"]).reshape(-1, *image_preprocess(m)(img).shape)
    assert want.shape[0] == 1 and np.abs(want[0] - image_preprocess(loaded)(img)).max() <= 2e-6
    px = torch.from_numpy(image_preprocess(m)(img)[None])
    with torch.no_grad():
        np.testing.assert_array_equal(F.image_features(loaded, px).numpy(), F.image_features(m, px).numpy())


def cli_train_export_recommend(model_and_tokenizer, tmp_path, real_image_gate: bool = True) -> dict:
    """`train recommender --init CKPT` (a checkpoint of the family written with save_pretrained; text-only prompts)
    for one step -> `export --profile cpu-fp32` (the same checkpoint as summarizer: every gate, real images through the
    fixed-size tower, catalog image features) -> `recommend`; returns recommend's JSON. Shared by every family's test
    (Qwen-VL's too)."""
    from typer.testing import CliRunner

    from mmsrarec_edge.cli import app
    from mmsrarec_edge.core.keyword_store import ItemKeywords, write_keyword_store
    from mmsrarec_edge.data.protocol import ProtocolConfig, build_protocol, save_protocol
    from mmsrarec_edge.data.synth import SynthConfig, generate
    from mmsrarec_edge.models.mllm import save_mllm
    from mmsrarec_edge.models.sasrec import SASRecConfig
    from mmsrarec_edge.models.sasrec_train import SASRecTrainConfig, train_sasrec

    root = tmp_path
    ds = generate(SynthConfig(seed=5, n_items=40, n_users=60, min_len=8, max_len=16), root / "data")
    proto = build_protocol(ds, ProtocolConfig(seed=1, n_negatives=10, max_cases_per_user=3))
    save_protocol(proto, root / "protocol")
    sas, _ = train_sasrec(proto, SASRecConfig(hidden=16, layers=1, heads=2, max_len=16),
                          SASRecTrainConfig(epochs=1, patience=3))
    sas.save(root / "sasrec")
    write_keyword_store(root / "kw.parquet", [
        ItemKeywords(i, [it.attributes["colour"], it.attributes["category"]],
                     [it.attributes["material"], it.attributes["style"]], True) for i, it in ds.items.items()])
    save_mllm(*model_and_tokenizer, root / "ckpt")
    runner = CliRunner()
    res = runner.invoke(app, ["train", "recommender", "--dataset", str(root / "data"), "--protocol",
                              str(root / "protocol"), "--sasrec", str(root / "sasrec"), "--keywords",
                              str(root / "kw.parquet"), "--out", str(root / "rec"), "--init", str(root / "ckpt"),
                              "--no-aux", "--epochs", "1", "--max-steps", "1", "--val-cases", "3",
                              "--windows-per-user", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", "--summarizer", str(root / "ckpt"), "--recommender", str(root / "rec"),
                              "--keywords", str(root / "kw.parquet"), "--dataset", str(root / "data"),
                              "--out", str(root / "bundle"), "--profile", "cpu-fp32"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((root / "bundle" / "manifest.json").read_text())
    assert "recommender.scorer" in manifest["graphs"] and "summarizer.vision" in manifest["graphs"]
    assert all(v["parity"]["passed"] for e in manifest["graphs"].values() for v in e["variants"].values())
    if real_image_gate:
        assert manifest["graphs"]["summarizer.vision"]["variants"]["fp32"]["parity"]["real_cases"] > 0
    history = ",".join(map(str, sorted(ds.items)[:4]))
    res = runner.invoke(app, ["recommend", str(root / "bundle"), "--history", history, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["items"]
    return out


def byom_import_export_recommend(family: str, decoder: str, tmp_path) -> None:
    """Bring your own model (the README's per-family example): a checkpoint of the family plus a peft LoRA adapter on
    its decoder's q/v projections, a prompt template, our SASRec and a CSV keyword file -> `import-model` (the adapter
    merged and recorded) -> `export` (recommender graphs with the vision tower, every gate) -> `recommend`."""
    from peft import LoraConfig, get_peft_model
    from typer.testing import CliRunner

    from mmsrarec_edge.cli import app
    from mmsrarec_edge.data.protocol import ProtocolConfig, build_protocol
    from mmsrarec_edge.data.synth import SynthConfig, generate
    from mmsrarec_edge.models.mllm import save_mllm
    from mmsrarec_edge.models.sasrec import SASRecConfig
    from mmsrarec_edge.models.sasrec_train import SASRecTrainConfig, train_sasrec

    root = tmp_path
    ds = generate(SynthConfig(seed=5, n_items=40, n_users=60, min_len=8, max_len=16), root / "data")
    proto = build_protocol(ds, ProtocolConfig(seed=1, n_negatives=10, max_cases_per_user=3))
    train_sasrec(proto, SASRecConfig(hidden=16, layers=1, heads=2, max_len=16),
                 SASRecTrainConfig(epochs=1, patience=3))[0].save(root / "sasrec")
    (root / "kw.csv").write_text("item_id,image_keywords,text_keywords\n" + "".join(
        f"{i},{it.attributes['colour']};{it.attributes['category']},{it.attributes['material']};"
        f"{it.attributes['style']}\n" for i, it in ds.items.items()))
    m, tok = build(family, decoder=decoder)
    save_mllm(m, tok, root / "ckpt")
    lora = get_peft_model(m, LoraConfig(r=4, lora_alpha=8,
                                        target_modules=r".*(language_model|text_model).*\.(q_proj|v_proj)"))
    with torch.no_grad():  # lora_B starts at 0: give the adapter something to merge
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    lora.save_pretrained(root / "lora")
    (root / "prompt.toml").write_text('prefix = "history : {history} . others chose : {collaborative} . candidate :"\n'
                                      'suffix = " {title} : {keywords}{image} . will the user choose it ? answer :"\n'
                                      'answer_words = ["yes", "no"]\n')
    (root / "rec.toml").write_text('name = "rec-only"\nprecision = "fp32"\ngraphs = ["recommender.vision", '
                                   '"recommender.embed", "recommender.decoder", "recommender.scorer", '
                                   '"sasrec.user_encoder"]\nexporter = "legacy"\n')
    runner = CliRunner()
    res = runner.invoke(app, ["import-model", "--model", str(root / "ckpt"), "--adapter", str(root / "lora"),
                              "--template", str(root / "prompt.toml"), "--sasrec", str(root / "sasrec"),
                              "--keywords", str(root / "kw.csv"), "--dataset", str(root / "data"),
                              "--out", str(root / "imported")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", "--profile", str(root / "rec.toml"), "--recommender", str(root / "imported"),
                              "--dataset", str(root / "data"), "--out", str(root / "bundle")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((root / "bundle" / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"recommender.vision", "recommender.embed", "recommender.decoder",
                                       "recommender.scorer", "sasrec.user_encoder"}
    assert all(v["parity"]["passed"] for e in manifest["graphs"].values() for v in e["variants"].values())
    assert manifest["sources"]["imported"]["recommender"]["adapter"]["r"] == 4
    res = runner.invoke(app, ["recommend", str(root / "bundle"), "--history", "1,2,3", "--top-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)["items"]) == 3

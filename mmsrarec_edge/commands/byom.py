"""`mmsrarec-edge import-model`: bring your own model (recommend/byom.py) -> a recommender dir that `export` bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import EXPORT, status


def import_model(
    model: Path = typer.Option(..., "--model", "-m", help="HF checkpoint folder (config.json, safetensors, tokenizer, "
                                                          "preprocessor_config.json) of a supported architecture."),
    sasrec: Path = typer.Option(..., "--sasrec", help="SASRec: a `train sasrec` directory, or a state dict file with "
                                                      "RecBole's SASRec key names (.safetensors, or a torch file "
                                                      "that loads with weights_only=True; pickle is refused)."),
    keywords: Path = typer.Option(..., "--keywords", help="Keyword store: CSV or JSONL (item_id, image_keywords, "
                                                          "text_keywords) or a keyword store .parquet."),
    dataset: Path = typer.Option(..., "--dataset", help="The catalog and users: a canonical dataset directory "
                                                        "(`data import` converts the other formats)."),
    out: Path = typer.Option(..., "--out", "-o", help="Recommender directory to write (then `export --recommender`)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="A peft LoRA adapter directory "
                                                                   "(adapter_model.safetensors): merged with "
                                                                   "merge_and_unload, recorded in the manifest."),
    template: Optional[Path] = typer.Option(None, "--template", help="Prompt template TOML (prefix/suffix with "
                                                                     "named slots, answer words, chat wrapping); "
                                                                     "default: the toolkit's own prompt."),
    protocol: Optional[Path] = typer.Option(None, "--protocol", help="Protocol directory: the retrieval index holds "
                                                                     "its training users only (default: every "
                                                                     "user of the dataset)."),
    sasrec_item_ids: Optional[Path] = typer.Option(None, "--sasrec-item-ids",
                                                   help="RecBole state dict: the item id of each internal id 1..N "
                                                        "(JSON list, or one per line; a leading [PAD] is dropped). "
                                                        "Default: internal id k is item id k."),
    sasrec_heads: int = typer.Option(2, "--sasrec-heads", min=1, help="RecBole state dict: attention heads (not "
                                                                      "stored in a state dict; RecBole's default 2)."),
    retrieval: bool = typer.Option(True, "--retrieval/--no-retrieval", help="Collaborative keywords of similar "
                                                                            "users in the prompt."),
    neighbours: int = typer.Option(3, "--neighbours", min=1, help="Similar users retrieved."),
    items_per_neighbour: int = typer.Option(2, "--items-per-neighbour", min=1, help="Next items per neighbour."),
    history_len: int = typer.Option(5, "--history-len", min=1, help="History items shown in the prompt (a template's "
                                                                    "[settings] may set it)."),
    rank_hint: bool = typer.Option(False, "--rank-hint/--no-rank-hint", help="Without a template: show the "
                                                                             "candidate's SASRec rank (a template "
                                                                             "uses {rank})."),
    candidate_image: bool = typer.Option(False, "--candidate-image/--no-candidate-image",
                                         help="Without a template: the candidate's image tokens (a template uses "
                                              "{image})."),
    rescore: int = typer.Option(50, "--rescore", min=1, help="First-stage items the runtime has the LLM rescore."),
):
    """Import a recommender trained elsewhere (HF checkpoint + LoRA adapter + template + SASRec + keywords) into a
    recommender directory; `export --recommender OUT --dataset DATASET` then bundles it, parity-gated as our own."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..core.outputs import RECOMMENDER, check_output_dir
    from ..recommend.byom import ImportSpec
    from ..recommend.byom import import_model as run

    check_output_dir(out, RECOMMENDER)
    spec = ImportSpec(model=model, sasrec=sasrec, keywords=keywords, dataset=dataset, out=out, adapter=adapter,
                      template=template, protocol=protocol, sasrec_item_ids=sasrec_item_ids,
                      sasrec_heads=sasrec_heads, retrieval=retrieval, neighbours=neighbours,
                      items_per_neighbour=items_per_neighbour, history_len=history_len, rank_hint=rank_hint,
                      candidate_image=candidate_image, n_rescore=rescore)
    meta = run(spec, echo=status)
    rec = meta["import"]
    typer.echo(json.dumps({"out": str(out), "adapter": (rec.get("adapter") or {}).get("sha256"),
                           "template": bool(meta["prompt"].get("template")), "sasrec": rec["sasrec"]["layout"],
                           "yes_token_id": meta["yes_token_id"], "no_token_id": meta["no_token_id"]}))
    status(f"wrote {out}; bundle it with `mmsrarec-edge export --recommender {out} --dataset {dataset} "
           "--profile cpu-fp32 --out BUNDLE`")


def register(apps) -> None:
    apps["app"].command("import-model", rich_help_panel=EXPORT)(import_model)

"""`mmsrarec-edge recommend` and `mmsrarec-edge summarize-item`: the torch-free runtime on an exported bundle.

Only the runtime package is imported (lazily, inside the commands), never torch or transformers: these commands work on
a slim install (`pip install 'mmsrarec-edge[cpu]'`).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import PRECISION_HELP, PROVIDER_HELP, RUNTIME, THREADS_HELP, Precision, Provider, threads, value, warn

VERIFY_HELP = ("auto: check every file's SHA-256 against the manifest unless a verified stamp (cache) shows nothing "
               "changed since the last full check; full: always rehash.")
NO_VERIFY_HELP = "Skip hashing (sizes and file types only; a configured trusted key still checks the signature)."
TRUST_KEY_HELP = ("Trusted Ed25519 public key (repeatable; also MMSRAREC_TRUST_KEYS and "
                  "~/.config/mmsrarec-edge/trusted_keys/): the bundle must be signed by one of them.")
NO_VERIFY_WARNING = "--no-verify: file contents are not hashed; corruption or tampering inside a file goes unnoticed"


def verify_mode(verify: str, no_verify: bool, trust_key: list[Path] | None) -> bool | str:
    """--verify/--no-verify/--trust-key -> load_manifest's `verify`; the --no-verify warning goes to stderr."""
    from ..core.errors import UserError
    from ..core.signing import add_cli_trust_keys

    if verify not in ("auto", "full"):
        raise UserError(f"--verify must be auto or full, got {verify!r}", "or pass --no-verify to skip hashing")
    add_cli_trust_keys(trust_key)
    if no_verify:
        warn(NO_VERIFY_WARNING)
        return False
    return "full" if verify == "full" else True


def _console():
    """A console on stdout: the table is the result."""
    from rich.console import Console

    return Console()


def recommend(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `mmsrarec-edge export`)."),
    user: int = typer.Option(None, "--user", help="A user id known to the bundle (its training users)."),
    history: str = typer.Option(None, "--history", help="Ad-hoc history: comma-separated item ids, oldest first."),
    candidates: str = typer.Option(None, "--candidates",
                                   help="ID,ID,... | sampled:N (random non-interacted items) | all. Default: every "
                                        "catalog item ranked by the first stage, the top --rescore rescored by the "
                                        "LLM."),
    top_k: int = typer.Option(None, "--top-k", "-k", show_default="10",
                              help="How many recommendations to return (at most the candidates scored: a warning "
                                   "when fewer)."),
    rescore: int = typer.Option(None, "--rescore",
                                help="How many first-stage items the LLM rescores (default: the bundle's, set by "
                                     "`train recommender --rescore`)."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampled:N candidates."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    provider: Provider = typer.Option(None, "--provider", case_sensitive=False, help=PROVIDER_HELP),
    precision: Precision = typer.Option(None, "--precision", case_sensitive=False, help=PRECISION_HELP),
    threads_: int = typer.Option(None, "--threads", help=THREADS_HELP),
    verify: str = typer.Option("auto", "--verify", help=VERIFY_HELP),
    no_verify: bool = typer.Option(False, "--no-verify", help=NO_VERIFY_HELP),
    trust_key: list[Path] = typer.Option(None, "--trust-key", help=TRUST_KEY_HELP),
):
    """Recommend items for a known user or an ad-hoc history, with scores and explanation keywords."""
    from ..core.candidates import CandidateSpec, parse_item_ids
    from ..core.errors import UserError
    from ..runtime.recommender import Recommender

    if (user is None) == (history is None):
        raise UserError("pass exactly one of --user ID or --history ID,ID,...")
    hist = parse_item_ids(history, "--history") if history is not None else None
    if candidates is not None and not candidates.strip():  # "" would parse as the default mode: say so instead
        raise UserError("--candidates is empty", "leave it out for the default (the first stage picks them), or "
                                                 "pass ID,ID,..., sampled:N or all")
    spec = CandidateSpec.parse(candidates, "--candidates")
    mode = verify_mode(verify, no_verify, trust_key)
    if mode:  # wrong ids before hashing the bundle
        from ..runtime.catalog import check_request_ids

        check_request_ids(bundle, hist, spec.ids, user)
    rec = Recommender(bundle, provider=value(provider), precision=value(precision), threads=threads(threads_),
                      verify=mode)
    result = rec.recommend(user=user, history=hist, candidates=spec, top_k=10 if top_k is None else top_k,
                           n_rescore=rescore, seed=seed)
    if no_verify:
        result.warnings.insert(0, NO_VERIFY_WARNING)  # already on stderr: recorded in the JSON, not printed twice
    if top_k is not None and len(result.items) < top_k:
        result.warnings.append(f"--top-k {top_k} is more than the {len(result.items)} candidates scored: returning "
                               f"{len(result.items)} (--rescore N or --candidates all score more)")
    for message in result.warnings[1 if no_verify else 0:]:
        warn(message)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from rich.table import Table

    who = f"user {user}" if user is not None else "ad-hoc history"
    variant = result.variants.get("recommender.decoder", "?")
    table = Table(title=f"Top {len(result.items)} for {who} ({result.provider} {variant}, {result.candidate_mode}, "
                        f"{len(result.scored)} scored by the LLM)")
    for col, kw in (("#", {"justify": "right"}), ("item", {"justify": "right"}), ("title", {}),
                    ("score", {"justify": "right"}), ("why (keywords)", {})):
        table.add_column(col, **kw)
    for it in result.items:
        table.add_row(str(it.rank), str(it.item_id), it.title, f"{it.score:.4f}", ", ".join(it.explanation))
    _console().print(table)


def summarize_item(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `mmsrarec-edge export`)."),
    image: Path = typer.Option(None, "--image", help="The item's image (PNG/JPEG)."),
    text: str = typer.Option(None, "--text", help="The item's text (title and description); - reads it from stdin "
                                                  "(UTF-8)."),
    text_file: Path = typer.Option(None, "--text-file", help="Read the item's text from this UTF-8 file."),
    add_to_catalog: bool = typer.Option(False, "--add-to-catalog", help="Add the item to the bundle's catalog."),
    item_id: int = typer.Option(None, "--item-id", help="Id of the new item (with --add-to-catalog)."),
    title: str = typer.Option(None, "--title", help="Title of the new item (default: the text's first 60 chars)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    provider: Provider = typer.Option(None, "--provider", case_sensitive=False, help=PROVIDER_HELP),
    precision: Precision = typer.Option(None, "--precision", case_sensitive=False, help=PRECISION_HELP),
    threads_: int = typer.Option(None, "--threads", help=THREADS_HELP),
    verify: str = typer.Option("auto", "--verify", help=VERIFY_HELP),
    no_verify: bool = typer.Option(False, "--no-verify", help=NO_VERIFY_HELP),
    trust_key: list[Path] = typer.Option(None, "--trust-key", help=TRUST_KEY_HELP),
    sign_key: Path = typer.Option(None, "--sign-key",
                                  help="With --add-to-catalog on a signed bundle: its signer's private key, to "
                                       "re-sign the changed manifest (a signed bundle is refused without it)."),
):
    """Summarize a new (cold-start) item into image and text keywords with the bundle's summarizer."""
    from ..core.bundle import load_manifest
    from ..core.errors import UserError
    from ..runtime.sessions import SessionConfig
    from ..runtime.summarizer import load_item_summarizer
    from ..runtime.tokenizer import require_utf8

    text = _item_text(text, text_file)
    title = None if title is None else require_utf8(title, "--title")
    if image is None and not (text and text.strip()):
        raise UserError("nothing to summarize", "pass --image PATH and/or --text \"...\" (or --text-file PATH)")
    if add_to_catalog and item_id is None:
        raise UserError("--add-to-catalog needs --item-id", "choose an id not yet in the catalog")
    if not add_to_catalog and (item_id is not None or title is not None or sign_key is not None):
        raise UserError("--item-id, --title and --sign-key only apply with --add-to-catalog")
    if add_to_catalog and no_verify:
        raise UserError("--add-to-catalog rewrites the bundle and verifies it; --no-verify does not apply")
    cfg = SessionConfig.resolve(value(provider), value(precision), threads(threads_))
    mode = verify_mode(verify, no_verify, trust_key)
    key = None
    if add_to_catalog:  # argument errors first: before summarizing or hashing anything
        from ..core.signing import load_private_key
        from ..runtime.catalog import check_can_resign, check_new_item_id

        key = load_private_key(sign_key) if sign_key is not None else None
        check_can_resign(bundle, key)
        check_new_item_id(bundle, item_id)
    manifest = load_manifest(bundle, verify=mode)
    summarizer = load_item_summarizer(manifest, cfg)
    warnings = _text_warnings(summarizer, text)
    for message in warnings:
        warn(message)
    summary = summarizer.summarize(image, text)
    out = {"image": str(image) if image is not None else None, **summary.to_dict(),
           "warnings": [NO_VERIFY_WARNING, *warnings] if no_verify else warnings}
    if add_to_catalog:
        from ..runtime.cold_start import add_summarized_item

        item = add_summarized_item(manifest, cfg, item_id, title, text or "", summary, image, key)
        out["added"] = item.to_dict()
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    from rich.table import Table

    table = Table(title="Item keywords" + (f" (added as item {item_id})" if add_to_catalog else ""))
    table.add_column("modality")
    table.add_column("keywords")
    table.add_column("raw output", style="dim")
    table.add_row("image", ", ".join(summary.image_keywords) or "-", summary.image_output if image is not None else "")
    table.add_row("text", ", ".join(summary.text_keywords) or "-", summary.text_output)
    _console().print(table)


def _item_text(text: str | None, text_file: Path | None) -> str | None:
    """The item's text from --text, --text - (stdin) or --text-file, checked to be UTF-8 (one UserError naming
    the source and the first bad byte)."""
    import sys

    from ..core.errors import UserError
    from ..runtime.tokenizer import require_utf8

    if text is not None and text_file is not None:
        raise UserError("pass one of --text or --text-file", "--text - reads the text from stdin")
    if text_file is not None:
        if not text_file.is_file():
            raise UserError(f"--text-file {text_file} " + ("is not a file" if text_file.exists() else "does not exist"),
                            "check the path")
        try:
            data = text_file.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read --text-file {text_file}: {exc.strerror}", "check its permissions") from exc
        return require_utf8(data.decode("utf-8", "surrogateescape"), f"--text-file {text_file}")
    if text == "-":
        return require_utf8(sys.stdin.buffer.read().decode("utf-8", "surrogateescape"), "--text - (stdin)")
    return None if text is None else require_utf8(text, "--text")


def _text_warnings(summarizer, text: str | None) -> list[str]:
    """A warning when the text is longer than the summarizer's prompt reads (it keeps the first max_text_tokens
    tokens of the whitespace-normalized text, as core.summary_prompts.text_prompt_ids does)."""
    if not text or not text.strip():
        return []
    n, limit = len(summarizer.codec.encode(" ".join(text.split()))), summarizer.spec.max_text_tokens
    if n <= limit:
        return []
    return [f"the text has {n} tokens; the summarizer reads the first {limit}, the rest is ignored"]


def register(apps) -> None:
    apps["app"].command("recommend", rich_help_panel=RUNTIME)(recommend)
    apps["app"].command("summarize-item", rich_help_panel=RUNTIME)(summarize_item)

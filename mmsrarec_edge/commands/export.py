"""`mmsrarec-edge export` (ONNX bundle with parity gates) and `mmsrarec-edge build-engine` (TensorRT engines).

Export profiles ship with the package (mmsrarec_edge/profiles/*.toml) and are picked by name (`--profile cpu-int8`);
a path to a TOML file works too. The command's own settings (ExportOptions: profile, inputs, output, threads) may come
from `--config FILE.toml` (its [export] table in a pipeline file); options given on the command line win.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from .common import CONFIG_HELP, EXPORT, config_command, threads, warn


@dataclass
class ExportOptions:
    """`export`'s settings; paths are relative to the current directory ("" = not given)."""

    profile: str = ""  # a packaged profile's name (`mmsrarec-edge config profiles` lists them) or a TOML path
    out: str = ""
    sasrec: str = ""
    recommender: str = ""
    summarizer: str = ""
    keywords: str = ""
    dataset: str = ""
    threads: int = 2  # torch/onnxruntime threads of export and parity checks
    catalog: str = "known"  # known: the dataset items SASRec knows; all: every dataset item (the rest cold-start)
    vision_graphs: bool = False  # True: vision graphs even for a text-only dataset (default: skipped, with the reason)
    allow_dataset_mismatch: bool = False  # export a dataset whose fingerprint is not the models' (with a warning)


def build_options(config: Path | None = None, **options) -> ExportOptions:
    """ExportOptions defaults <- `config`'s [export] settings <- the options given (None: not given)."""
    from ..core.config import build

    return build(ExportOptions(), config, "export", {k: None if v is None else (str(v) if isinstance(v, Path) else v)
                                                     for k, v in options.items()})


def export(
    profile: str = typer.Option(None, "--profile", "-p",
                                help="Export profile: a packaged profile's name, e.g. cpu-int8 (`mmsrarec-edge config "
                                     "profiles` lists them), or a TOML file @profile"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bundle directory to write (replaced atomically) "
                                                                 "@out"),
    sasrec: Optional[Path] = typer.Option(None, help="SASRec model directory (`train sasrec`) @sasrec"),
    recommender: Optional[Path] = typer.Option(None, help="Recommender directory (model/, recommender.json, "
                                                          "retrieval/) @recommender"),
    summarizer: Optional[Path] = typer.Option(None, help="Summarizer directory (a LLaVA checkpoint) @summarizer"),
    keywords: Optional[Path] = typer.Option(None, help="Keyword store Parquet (`summarize`) @keywords"),
    dataset: Optional[Path] = typer.Option(None, help="Canonical dataset: the catalog, and real parity inputs "
                                                      "@dataset"),
    threads_: int = typer.Option(None, "--threads", help="Torch/ONNX Runtime threads used by export and parity "
                                                         "checks, at most the CPU count @threads"),
    catalog: Optional[str] = typer.Option(None, "--catalog",
                                          help="Catalog items: known (the dataset items SASRec knows; the others, "
                                               "dropped by the k-core filter, are left out and counted) or all (they "
                                               "are kept as cold-start items) @catalog"),
    vision_graphs: Optional[bool] = typer.Option(None, "--vision-graphs/--no-vision-graphs",
                                                 help="Export the vision graphs even when the dataset has no item "
                                                      "images (default: skipped, the reason in the manifest's "
                                                      "graphs_skipped) @vision_graphs"),
    allow_dataset_mismatch: Optional[bool] = typer.Option(None, "--allow-dataset-mismatch",
                                                          help="Export even when --dataset is not the dataset the "
                                                               "models were trained on (a warning) "
                                                               "@allow_dataset_mismatch"),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key",
                                            help="Sign the bundle's manifest with this Ed25519 private key "
                                                 "(`mmsrarec-edge keygen`): manifest.sig in the bundle."),
):
    """Export ONNX graphs + precision variants, gate each against PyTorch, and write one verified bundle."""
    from ..core.bundle import MANIFEST
    from ..core.config import profile_path
    from ..core.errors import UserError
    from ..core.io_utils import check_output_dir

    opts = build_options(config, profile=profile, out=out, sasrec=sasrec, recommender=recommender,
                         summarizer=summarizer, keywords=keywords, dataset=dataset, threads=threads_, catalog=catalog,
                         vision_graphs=vision_graphs, allow_dataset_mismatch=allow_dataset_mismatch)
    if not opts.profile:
        raise UserError("export needs a profile", "pass --profile NAME (e.g. cpu-int8) or a TOML file")
    if not opts.out:
        raise UserError("export needs an output directory", "pass --out DIR")
    if opts.threads < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--threads")
    from ..exporter.catalog import CATALOG_MODES

    if opts.catalog not in CATALOG_MODES:
        raise UserError(f"--catalog must be one of {', '.join(CATALOG_MODES)}, got {opts.catalog!r}")
    n_threads = threads(opts.threads)
    prof_file = profile_path(opts.profile)
    out_dir = Path(opts.out)
    check_output_dir(out_dir, MANIFEST)  # before minutes of export, not after
    from ..core.signing import load_private_key

    key = load_private_key(sign_key) if sign_key is not None else None

    import torch

    from ..core.progress import progress_bar
    from ..core.signing import key_id
    from ..exporter.bundle import export_bundle, parity_summary
    from ..exporter.inputs import load_inputs
    from ..exporter.profile import load_profile

    def given(p: str) -> Path | None:
        return Path(p) if p else None

    torch.set_num_threads(n_threads)
    prof = load_profile(prof_file)
    inputs = load_inputs(given(opts.summarizer), given(opts.recommender), given(opts.sasrec), given(opts.keywords),
                         given(opts.dataset), opts.catalog, opts.vision_graphs, opts.allow_dataset_mismatch)
    for message in inputs.warnings:
        warn(message)
    n = sum(len(prof.graph_variants(g)) for g in prof.graphs)
    with progress_bar(f"exporting ({prof.name})", n) as advance:
        manifest = export_bundle(inputs, prof, out_dir, profile_source=opts.profile, progress=advance,
                                 sign_key=key)
    for graph, precision, metrics in parity_summary(manifest):
        figures = ", ".join(f"{k} {v:.2e}" for k, v in metrics.items())
        typer.echo(f"parity {graph} [{precision}]: {figures}  (pass)")
    for graph, why in manifest.get("graphs_skipped", {}).items():
        typer.echo(f"skipped {graph}: {why}")
    catalog_section = (json.loads((out_dir / "config.json").read_text()).get("catalog")
                       if (out_dir / "config.json").is_file() else None)
    if catalog_section:
        from ..exporter.catalog import describe_catalog

        typer.echo(describe_catalog(catalog_section))
    total = sum(f["bytes"] for f in manifest["files"].values())
    # the export's summary is its result (stdout), as the parity lines above
    typer.echo(f"wrote {out_dir} ({len(manifest['files'])} files, {total / 1e6:.1f} MB, "
               f"{manifest['export_seconds']} s)" + (f", signed by key {key_id(key.public_key())}" if key else ""))


def keygen(
    out: Path = typer.Option(..., "--out", "-o", help="Directory for bundle-signing.key (private, mode 0600) and "
                                                      "bundle-signing.pub (give it to the runtime as a trusted key)."),
):
    """Make an Ed25519 key pair for signing bundles (`export --sign-key`); never overwrites an existing key."""
    from ..core.signing import generate_keypair

    priv, pub, kid = generate_keypair(out)
    typer.echo(f"private key {priv} (keep it secret; `export --sign-key {priv}`)")
    typer.echo(f"public key {pub} (key id {kid}; trust it with --trust-key, MMSRAREC_TRUST_KEYS or "
               "~/.config/mmsrarec-edge/trusted_keys/)")


def build_engine(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `mmsrarec-edge export`."),
    fp16: Optional[bool] = typer.Option(None, "--fp16/--fp32",
                                        help="Engine precision (default: the bundle profile's)."),
    workspace: Optional[int] = typer.Option(None, "--workspace",
                                            help="TensorRT workspace in MB (default: the bundle profile's)."),
    graph: Optional[list[str]] = typer.Option(None, "--graph", help="Only these graphs (repeatable)."),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key",
                                            help="A signed bundle's signer key: the changed manifest is re-signed "
                                                 "(a signed bundle is refused without it)."),
):
    """Build TensorRT engines for a bundle's graphs into BUNDLE/engines/ (needs TensorRT on this machine)."""
    from ..core.progress import progress_bar
    from ..core.signing import load_private_key, sign_manifest
    from ..exporter.tensorrt import build_bundle_engines
    from ..runtime.catalog import bundle_lock, check_can_resign

    key = load_private_key(sign_key) if sign_key is not None else None
    check_can_resign(bundle, key)

    with progress_bar("building TensorRT engines", len(graph) if graph else None) as advance:
        with bundle_lock(bundle):
            engines = build_bundle_engines(bundle, fp16, workspace, graph or None, progress=advance)
            if key is not None:
                sign_manifest(bundle, key)
    for g, e in engines.items():
        typer.echo(f"engine {g}: {e['file']} (TensorRT {e['tensorrt_version']}, {'fp16' if e['fp16'] else 'fp32'})")


def register(apps) -> None:
    apps["app"].command("export", cls=config_command(ExportOptions), rich_help_panel=EXPORT)(export)
    apps["app"].command("build-engine", rich_help_panel=EXPORT)(build_engine)
    apps["app"].command("keygen", rich_help_panel=EXPORT)(keygen)

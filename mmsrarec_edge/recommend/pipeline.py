"""Stages 2 + 3 end to end: retrieval index -> prompts -> multi-task SFT -> the recommender directory (model_dir.py).

Everything here reads training users only, except model selection, which reads validation cases (never the test
split): the best epoch and, with `items_per_neighbour=0` ("auto"), the number of next items taken per neighbour. That
choice uses a cheap proxy instead of one trained model per value: validation NDCG@5 of a scorer that ranks each
candidate by how often (and how early) it appears among the retrieved next items, keyword overlap breaking ties.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core import prompt as P
from ..core.candidates import DEFAULT_RESCORE
from ..core.context import PromptMaker, item_texts
from ..core.errors import UserError
from ..core.io_utils import atomic_dir, sha256_file
from ..core.outputs import RECOMMENDER
from ..core.retrieval import RetrievalConfig, RetrievalIndex, build_retrieval
from .model_dir import FORMAT, META, VERSION, load_item_pixels, sasrec_ranks, score_cases, write_items
from .tasks import TaskConfig, build_windows, epoch_rows
from .train import TrainConfig, train_recommender, validation_metrics

IPN_CHOICES = (1, 2, 3)  # k=3 neighbours x 3 = the prompt's 9 collaborative keyword groups


@dataclass
class RecommenderConfig:
    retrieval_enabled: bool = True
    items_per_neighbour: int = 0  # 0 = choose on validation (proxy, see the module docstring)
    init: str = "minilm"  # "": a fresh tiny LLaVA; "minilm": fresh, token embeddings from MiniLM (PCA, scaled to
    # embed_std); else a LLaVA checkpoint directory (e.g. the summarizer's `train summarizer` output or a stage of it)
    embed_std: float = 0.2
    freeze_embeddings: bool = True  # why frozen, std 0.2: summarize/embeddings.py (trainable at 0.02: yes/no at prior)
    # MLLMConfig overrides for a fresh model (the CLI's --hidden/--layers/--seed set them; intermediate = 2 x hidden)
    mllm: dict = field(default_factory=lambda: {"hidden_size": 128, "num_layers": 2, "intermediate_size": 256,
                                                "seed": 0})
    # Rank hint only: SASRec folds giving the training windows' hints; 0 = the main SASRec's in-sample ranks, which
    # validated better (NOTES.md in benchmarks/results/recommender).
    crossfit_folds: int = 0
    sasrec_folds: str = ""  # reuse folds trained before (a recommender's sasrec_folds/); "" = train them here
    prompt: P.PromptConfig = field(default_factory=P.PromptConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    n_rescore: int = DEFAULT_RESCORE  # first-stage items the bundle's runtime has the LLM rescore per request


def proxy_scores(index: RetrievalIndex, maker_items, neighbours, cases, ipn: int) -> np.ndarray:
    out = np.zeros(cases.candidates.shape)
    for r, nbs in enumerate(neighbours):
        got, groups = index.context(nbs, ipn)
        weight = {i: 1.0 / (1 + k) for k, i in reversed(list(enumerate(got)))}
        kws = {k for g in groups for k in g}
        for c, cand in enumerate(cases.candidates[r].tolist()):
            ck = maker_items[cand].keywords if cand in maker_items else []
            overlap = len(kws & set(ck)) / max(1, len(ck))
            out[r, c] = weight.get(cand, 0.0) + 0.01 * overlap
    return out


def choose_items_per_neighbour(index: RetrievalIndex, items, sasrec, val_cases, k: int) -> tuple[int, dict]:
    emb = sasrec.user_embeddings(val_cases.prefixes)
    nbs = index.neighbours(emb, k, exclude=val_cases.user_id.tolist())
    table = {}
    for ipn in IPN_CHOICES:
        res = validation_metrics(proxy_scores(index, items, nbs, val_cases, ipn), val_cases.user_id)
        table[ipn] = {"NDCG@5": round(res["NDCG@5"], 4), "HR@5": round(res["HR@5"], 4)}
    best = max(IPN_CHOICES, key=lambda i: (table[i]["NDCG@5"], -i))
    return best, {"chosen": best, "proxy_val": {str(i): v for i, v in table.items()}}


def _fingerprint(path: Path) -> dict:
    path = Path(path)
    if path.is_file():
        return {"path": str(path), "sha256": sha256_file(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors"))
    return {"path": str(path), "sha256": {p.relative_to(path).as_posix(): sha256_file(p) for p in files}}


def _val_subset(cases, n: int, seed: int):
    if n <= 0 or n >= len(cases):
        return cases
    return cases.subset(np.sort(np.random.default_rng(seed).choice(len(cases), n, replace=False)))


@dataclass
class Inputs:
    """What `run` reads: the dataset, its protocol, the SASRec, and the catalog as the prompts show it."""

    dataset_dir: Path
    protocol_dir: Path
    sasrec_dir: Path
    keywords_path: Path
    ds: object
    protocol: object
    sasrec: object
    items: dict  # item id -> ItemText (title, keywords from the store, has_image)
    images: dict  # item id -> image path, for the items that show one
    universe: list[int]  # the protocol's items
    train_sequences: dict  # training user -> item sequence


@dataclass
class Tokens:
    yes_id: int
    no_id: int
    pad_id: int
    eos_id: int | None
    bos_id: int | None


def run(dataset_dir: Path, protocol_dir: Path, sasrec_dir: Path, keywords_path: Path, out: Path,
        cfg: RecommenderConfig, progress_factory=None) -> dict:
    """Train and write the recommender directory. Returns recommender.json's content."""
    import torch

    prog = progress_factory or (lambda label, total: _NullProgress())
    inputs = load_inputs(dataset_dir, protocol_dir, sasrec_dir, keywords_path)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    with atomic_dir(Path(out), marker=RECOMMENDER) as tmp:
        retrieval, ipn_info = build_retrieval_index(tmp, inputs, cfg)
        model, tok = init_model(cfg)
        tokens = answer_tokens(tok)
        maker = prompt_maker(inputs, tok, model, retrieval, cfg)
        rank_folds, folds_info = rank_hint_folds(tmp, inputs, cfg, prog)
        windows = training_windows(inputs, maker, cfg, rank_folds, prog)
        pixels = load_item_pixels(dataset_dir, inputs.images, model) if cfg.prompt.candidate_image else None
        check_prompt_length(windows, maker, inputs.universe, model)
        model, log = train_model(model, windows, maker, inputs, tokens, pixels, cfg, prog)
        meta = metadata(inputs, cfg, tokens, model, ipn_info, folds_info, log)
        write_outputs(tmp, model, tok, inputs, meta)
    return meta


def load_inputs(dataset_dir: Path, protocol_dir: Path, sasrec_dir: Path, keywords_path: Path) -> Inputs:
    """Load the inputs; refuse a protocol built from another dataset or a keyword store missing most of its items."""
    from ..core.keyword_store import read_keyword_store
    from ..data.protocol import load_protocol
    from ..data.schema import load_dataset
    from ..models.sasrec import SASRecModel

    ds, protocol = load_dataset(dataset_dir), load_protocol(protocol_dir)
    if protocol.dataset_fingerprint:
        from ..data.protocol import fingerprint

        if fingerprint(ds) != protocol.dataset_fingerprint:
            raise UserError(f"protocol {protocol_dir} was not built from dataset {dataset_dir}",
                            "pass the dataset the protocol was built from")
    sasrec = SASRecModel.load(sasrec_dir)
    store = read_keyword_store(keywords_path)
    universe = [int(i) for i in protocol.items]
    missing = [i for i in universe if i not in store]
    if len(missing) > 0.5 * len(universe):
        raise UserError(f"the keyword store {keywords_path} covers only {len(universe) - len(missing)} of "
                        f"{len(universe)} protocol items", "summarize this dataset: `mmsrarec-edge summarize`")
    items = item_texts({i: ds.items[i].title for i in universe}, store,
                       {i: bool(ds.items[i].image) and ds.image_path(i) is not None for i in universe})
    images = {i: ds.items[i].image for i in universe if items[i].has_image}
    return Inputs(Path(dataset_dir), Path(protocol_dir), Path(sasrec_dir), Path(keywords_path), ds, protocol, sasrec,
                  items, images, universe, protocol.train_sequences())


def build_retrieval_index(tmp: Path, inputs: Inputs, cfg: RecommenderConfig) -> tuple[RetrievalIndex | None, dict]:
    """The user index under tmp/retrieval (None with retrieval off), and items per neighbour: cfg's, or chosen on
    validation when 0 (written back to cfg.retrieval.items_per_neighbour). Returns (index, choice and recall info)."""
    if not cfg.retrieval_enabled:
        return None, {}
    sasrec, items, protocol = inputs.sasrec, inputs.items, inputs.protocol
    q = sasrec.user_embeddings(protocol.val.prefixes)
    rmeta = build_retrieval(tmp / "retrieval", inputs.train_sequences, sasrec.user_embeddings,
                            lambda i: items[i].keywords if i in items else [], cfg.retrieval, queries=q)
    retrieval = RetrievalIndex(tmp / "retrieval")
    ipn, ipn_info = cfg.items_per_neighbour, {}
    if ipn <= 0:
        ipn, ipn_info = choose_items_per_neighbour(retrieval, items, sasrec, protocol.val, cfg.retrieval.k)
    cfg.retrieval.items_per_neighbour = ipn
    ipn_info["recall"] = rmeta.get("recall")
    return retrieval, ipn_info


def init_model(cfg: RecommenderConfig):
    """The LLaVA to fine-tune (cfg.init: a checkpoint, or fresh with MiniLM or random token embeddings), in float32,
    token embeddings frozen with cfg.freeze_embeddings. Returns (model, tokenizer)."""
    from ..models.mllm import MLLMConfig, build_mllm, build_tokenizer, load_mllm

    if cfg.init and cfg.init != "minilm":
        init_dir = Path(cfg.init)
        # a `train summarizer` output holds rl/ and sft/; a recommender directory holds model/
        for sub in ("rl", "sft", "model"):
            if (init_dir / sub / "config.json").is_file():
                init_dir = init_dir / sub
                break
        model, tok = load_mllm(init_dir)
        from ..models import families

        if not families.is_llava(model) and cfg.prompt.candidate_image:
            # text-only prompts train exactly (Qwen: their 3-D positions are three equal 1-D ones); candidate images
            # would need each family's pixel layout (Qwen: patch rows and multimodal positions) in the packed rows
            raise UserError(f"train recommender: candidate images are not supported for {families.family_of(model)} "
                            "checkpoints yet", "train without candidate images")
    else:
        tok = build_tokenizer()
        model = build_mllm(MLLMConfig(**cfg.mllm), tok)
        if cfg.init == "minilm":
            from ..summarize.embeddings import init_token_embeddings

            init_token_embeddings(model, cfg.embed_std, cfg.train.seed)
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)  # tied: the LM head is frozen with it
    return model.float(), tok


def answer_tokens(tok) -> Tokens:
    """The yes/no answer tokens (each must be one token), pad, eos and bos ids."""
    yes_id, no_id = (tok.convert_tokens_to_ids(w) for w in P.ANSWER_WORDS)
    for w, i in zip(P.ANSWER_WORDS, (yes_id, no_id)):
        if i in (None, tok.unk_token_id) or tok(w, add_special_tokens=False)["input_ids"] != [i]:
            raise UserError(f"the tokenizer has no single token for {w!r}", "the yes/no head needs one")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return Tokens(yes_id, no_id, pad_id, tok.eos_token_id, tok.bos_token_id)


def prompt_maker(inputs: Inputs, tok, model, retrieval, cfg: RecommenderConfig) -> PromptMaker:
    from ..models.mllm import num_image_tokens

    encode = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ranks = sasrec_ranks(inputs.sasrec) if cfg.prompt.rank_hint else None
    return PromptMaker(inputs.items, encode, tok.bos_token_id, cfg.prompt, retrieval,
                       cfg.retrieval.items_per_neighbour, cfg.retrieval.k, ranks, num_image_tokens(model))


def rank_hint_folds(tmp: Path, inputs: Inputs, cfg: RecommenderConfig, prog) -> tuple[list | None, dict | None]:
    """Cross-fitted SASRec folds for the training windows' rank hints (crossfit.py), copied from cfg.sasrec_folds or
    trained into tmp/sasrec_folds; (None, None) without the rank hint or cross-fitting."""
    if not (cfg.prompt.rank_hint and cfg.crossfit_folds >= 2):
        return None, None
    from .crossfit import load_folds, train_folds

    if cfg.sasrec_folds:
        shutil.copytree(cfg.sasrec_folds, tmp / "sasrec_folds")
    else:
        with prog("cross-fitting SASRec folds", cfg.crossfit_folds) as adv:
            train_folds(inputs.protocol, inputs.sasrec, tmp / "sasrec_folds", cfg.crossfit_folds, cfg.train.seed, adv)
    rank_folds = load_folds(tmp / "sasrec_folds", inputs.protocol)
    return rank_folds, {"dir": "sasrec_folds", "k": len(rank_folds), "source": cfg.sasrec_folds or "trained here"}


def training_windows(inputs: Inputs, maker: PromptMaker, cfg: RecommenderConfig, rank_folds, prog) -> list:
    """The training users' windows with their prompt prefixes (tasks.py)."""
    with prog("building training windows", None) as adv:
        return build_windows(inputs.train_sequences, maker, inputs.sasrec.user_embeddings, cfg.tasks, adv, rank_folds)


def check_prompt_length(windows, maker: PromptMaker, universe: list[int], model) -> None:
    """Refuse prompts longer than the model's positions (the longest prefix + a long suffix + slack)."""
    longest = max(len(w.prefix) for w in windows) + max(len(maker.suffix(i, 0)) for i in universe[:200]) + 16
    limit = model.config.text_config.max_position_embeddings
    if longest > limit:
        raise UserError(f"prompts reach {longest} tokens, beyond the model's {limit} positions",
                        "show fewer keywords (prompt config) or use a model with more positions")


def train_model(model, windows, maker: PromptMaker, inputs: Inputs, tokens: Tokens, pixels, cfg: RecommenderConfig,
                prog):
    """Multi-task SFT (train.py) on fresh rows every epoch, selected on `cfg.train.val_cases` validation cases.
    Returns (the best epoch's model, training log)."""
    from .scoring import TorchScorer

    val_sel = _val_subset(inputs.protocol.val, cfg.train.val_cases, cfg.train.seed)

    def make_epoch(epoch: int):
        return epoch_rows(windows, maker, inputs.universe, tokens.yes_id, tokens.no_id, tokens.eos_id, cfg.tasks,
                          epoch)

    def validate(m):
        scorer = TorchScorer(m, tokens.yes_id, tokens.no_id, tokens.pad_id)
        s = score_cases(scorer, maker, inputs.sasrec, val_sel, pixels)
        return validation_metrics(s, val_sel.user_id)

    n_first = len(make_epoch(0))
    steps = cfg.train.epochs * ((n_first + cfg.train.batch_size - 1) // cfg.train.batch_size)
    with prog("training the recommender (steps)", steps) as adv:
        return train_recommender(model, make_epoch, tokens.pad_id, cfg.train, validate, pixels, adv)


def metadata(inputs: Inputs, cfg: RecommenderConfig, tokens: Tokens, model, ipn_info: dict, folds_info: dict | None,
             log: dict) -> dict:
    """recommender.json: what the runtime and the export need to rebuild the prompts, the inputs' fingerprints,
    the training log."""
    from ..models.mllm import num_image_tokens

    protocol = inputs.protocol
    return {
        "format": FORMAT, "version": VERSION, "answer_words": list(P.ANSWER_WORDS),
        "yes_token_id": int(tokens.yes_id), "no_token_id": int(tokens.no_id), "bos_id": tokens.bos_id,
        "pad_id": int(tokens.pad_id), "eos_id": tokens.eos_id, "n_image_tokens": num_image_tokens(model),
        "prompt": cfg.prompt.to_dict(), "history_len": cfg.prompt.history_len, "n_rescore": cfg.n_rescore,
        "retrieval": {"enabled": cfg.retrieval_enabled, "dir": "retrieval" if cfg.retrieval_enabled else None,
                      "k": cfg.retrieval.k, "items_per_neighbour": cfg.retrieval.items_per_neighbour,
                      **ipn_info},
        "ablations": {"no_retrieval": not cfg.retrieval_enabled, "no_aux": not cfg.tasks.aux,
                      "keywords": str(inputs.keywords_path)},
        "rank_hint": {"enabled": cfg.prompt.rank_hint, "crossfit": folds_info},
        "tasks": asdict(cfg.tasks), "init": cfg.init or "scratch", "mllm": cfg.mllm,
        "embeddings": {"std": cfg.embed_std if cfg.init == "minilm" else None, "frozen": cfg.freeze_embeddings},
        "inputs": {"dataset": {"path": str(inputs.dataset_dir.resolve()), "fingerprint": protocol.dataset_fingerprint},
                   "protocol": {"path": str(inputs.protocol_dir.resolve()),
                                "train_users": [int(u) for u in protocol.train_users]},
                   "sasrec": _fingerprint(inputs.sasrec_dir), "keywords": _fingerprint(inputs.keywords_path)},
        "training": log,
    }


def write_outputs(tmp: Path, model, tok, inputs: Inputs, meta: dict) -> None:
    """model/, sasrec/, items.parquet and recommender.json (model_dir.py's layout)."""
    from ..models.mllm import save_mllm

    save_mllm(model, tok, tmp / "model")
    inputs.sasrec.save(tmp / "sasrec")
    write_items(tmp / "items.parquet", inputs.items, inputs.images)
    (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")


class _NullProgress:
    def __enter__(self):
        return lambda n=1, **kw: None

    def __exit__(self, *exc):
        return False

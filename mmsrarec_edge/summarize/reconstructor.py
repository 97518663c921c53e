"""The frozen reference LM behind R_recon: a small text LM that regenerates an item's text from its keywords.

Why a separate LM trained here, rather than the SFT'd summarizer's own decoder frozen: the summarizer's decoder was
taught to write keywords from a text, never a text from keywords, so its likelihood of a text given keywords says
little; and a judge that shares weights with the policy (even frozen) invites the policy to match its own quirks. This
LM (a tiny Qwen2, hidden 128 x 2 layers, the MiniLM WordPiece vocabulary) is trained only on training items, on many
keyword sets per item (the SFT targets, random subsets of them and of the text's content words, some wrong keywords
from other items), so it learns how much each keyword pins the text down. It is frozen before GRPO starts and always
uses its own tokenizer, so R_recon is comparable across policies, including a user's checkpoint with another
vocabulary.

Sequence: [bos] " kw1, kw2, ..." [eos] text tokens (at most max_text_tokens). mean NLL = mean over the text tokens.
Vocabulary: the `vocab_size` WordPiece ids most frequent in the catalog's texts (rarer ones map to [UNK]): the LM head
over all 30k ids would cost more than the rest of the model together.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.errors import UserError
from ..core.io_utils import write_json
from ..core.summary_prompts import format_keywords
from ..models.training import OptimConfig, fit

PAD, BOS, EOS, UNK = 0, 1, 2, 3  # compact ids of the special tokens


def compact_vocab(tokenizer, texts: Sequence[str], size: int) -> list[int]:
    """WordPiece ids kept by the reference LM: the specials, then the most frequent ids in `texts` (ties by id)."""
    counts: dict[int, int] = {}
    for t in texts:
        for i in tokenizer(" ".join(t.split()), add_special_tokens=False)["input_ids"]:
            counts[i] = counts.get(i, 0) + 1
    specials = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    ranked = sorted((i for i in counts if i not in specials), key=lambda i: (-counts[i], i))
    return specials + ranked[: max(0, size - len(specials))]


class Reconstructor:
    def __init__(self, model, tokenizer, vocab: Sequence[int], max_text_tokens: int = 96):
        self.model, self.tokenizer, self.max_text_tokens = model.eval(), tokenizer, max_text_tokens
        self.vocab = [int(v) for v in vocab]
        self._index = {v: k for k, v in enumerate(self.vocab)}
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def build(cls, tokenizer, vocab: Sequence[int], hidden: int = 128, layers: int = 2, max_text_tokens: int = 96,
              seed: int = 0):
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(seed)
        cfg = Qwen2Config(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=hidden * 2,
                          max_position_embeddings=max_text_tokens + 64, tie_word_embeddings=True,
                          bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
        return cls(Qwen2ForCausalLM(cfg), tokenizer, vocab, max_text_tokens)

    def _encode(self, s: str) -> list[int]:
        return [self._index.get(i, UNK) for i in self.tokenizer(s, add_special_tokens=False)["input_ids"]]

    def sequence(self, keywords: Sequence[str], text: str) -> tuple[list[int], int]:
        """Compact token ids and the index where the text starts."""
        kw = self._encode(" " + format_keywords(keywords))[:48] if keywords else []
        prefix = [BOS] + kw + [EOS]
        body = self._encode(" ".join(text.split()))[: self.max_text_tokens] or [UNK]
        return prefix + body, len(prefix)

    def _batch(self, seqs: list[tuple[list[int], int]]):
        width = max(len(s) for s, _ in seqs)
        ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        for r, (s, start) in enumerate(seqs):  # right padding: positions of real tokens start at 0
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
            labels[r, start:len(s)] = torch.tensor(s[start:])
        return ids, mask, labels

    def _token_nll(self, ids, mask, labels):
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tgt = labels[:, 1:]
        nll = nn.functional.cross_entropy(logits.transpose(1, 2), tgt.clamp(min=0), reduction="none")
        valid = (tgt != -100).float()
        return nll * valid, valid

    @torch.no_grad()
    def mean_nll(self, keyword_lists: Sequence[Sequence[str]], texts: Sequence[str],
                 batch_size: int = 64) -> np.ndarray:
        """Per pair, the mean negative log-likelihood (nats per token) of the text given the keywords."""
        out = np.zeros(len(texts), np.float64)
        seqs = [self.sequence(k, t) for k, t in zip(keyword_lists, texts)]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            nll, valid = self._token_nll(*self._batch([seqs[r] for r in rows]))
            out[rows] = (nll.sum(1) / valid.sum(1)).double().numpy()
        return out

    def save(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        self.model.save_pretrained(out_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)
        write_json(out_dir / "reconstructor.json", {"max_text_tokens": self.max_text_tokens,
                                                    "sequence": "[bos] keywords [eos] text; mean NLL over text",
                                                    "vocab": self.vocab})

    @classmethod
    def load(cls, path: Path) -> "Reconstructor":
        from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

        path = Path(path)
        if not (path / "reconstructor.json").exists():
            raise UserError(f"{path} is not a reference LM directory (no reconstructor.json)",
                            "it is written by `mmsrarec-edge train summarizer` under OUT/reconstructor")
        meta = json.loads((path / "reconstructor.json").read_text())
        model = Qwen2ForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True)
        tok = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        return cls(model, tok, meta["vocab"], int(meta["max_text_tokens"]))


def keyword_samples(pools: list[list[str]], rng: random.Random, max_keywords: int, wrong_p: float = 0.2) -> Callable:
    """A sampler of (item index, keyword set): random subsets of the item's pool, sometimes with another item's
    words."""

    def sample(i: int) -> list[str]:
        pool = pools[i]
        k = rng.randint(0, min(len(pool), max_keywords))
        kws = rng.sample(pool, k)
        if rng.random() < wrong_p and len(pools) > 1:
            other = pools[rng.randrange(len(pools))]
            if other:
                kws.insert(rng.randint(0, len(kws)), rng.choice(other))
        return list(dict.fromkeys(kws))

    return sample


def train_reconstructor(recon: Reconstructor, texts: list[str], pools: list[list[str]], steps: int, batch_size: int,
                        lr: float, max_keywords: int = 8, seed: int = 0, progress=None) -> list[float]:
    """Teach the reference LM p(text | keywords) on training items (AdamW, warm-up over the first 5% of steps x cosine,
    gradient norm clipped at 1, through the shared loop models/training.py); returns the loss curve. Frozen
    afterwards."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    sample = keyword_samples(pools, rng, max_keywords)
    model = recon.model
    for p in model.parameters():
        p.requires_grad_(True)

    def batches(_epoch: int):
        for _ in range(steps):
            rows = [rng.randrange(len(texts)) for _ in range(batch_size)]
            yield recon._batch([recon.sequence(sample(i), texts[i]) for i in rows])

    def loss_fn(batch) -> torch.Tensor:
        nll, valid = recon._token_nll(*batch)
        return nll.sum() / valid.sum()

    res = fit(model, list(model.parameters()), batches, loss_fn,
              OptimConfig(lr=lr, weight_decay=0.01, schedule="cosine", warmup=steps // 20, clip=1.0),
              total_steps=steps, progress=progress)
    for p in model.parameters():
        p.requires_grad_(False)
    return res.losses

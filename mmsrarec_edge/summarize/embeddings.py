"""Start the default decoder's token embeddings from all-MiniLM-L6-v2's word embeddings.

The default MLLM uses MiniLM's own WordPiece vocabulary, so MiniLM's 384-d word embeddings (a pretrained matrix we
already ship) line up with the decoder's rows one to one. Reduced to the decoder width by PCA and rescaled to the
decoder's init scale, they give a random model tokens that already sit near their kind (colours near colours,
materials near materials): SFT then learns to copy and name attributes in far fewer steps than from a random matrix
(measured in benchmarks/results/summarizer/report.md). Only for the embedded default, never for a user's checkpoint.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def minilm_word_embeddings() -> torch.Tensor:
    from safetensors.torch import load_file

    from ..models.mllm import minilm_dir

    state = load_file(str(minilm_dir() / "model.safetensors"))
    key = next(k for k in state if k.endswith("word_embeddings.weight"))
    return state[key].float()


@torch.no_grad()
def init_token_embeddings(model, tokenizer, seed: int = 0) -> int:
    """Overwrite the rows of MiniLM's vocabulary in the decoder's input embeddings; returns the rows written."""
    emb = model.get_input_embeddings().weight
    words = minilm_word_embeddings()
    n, dim = min(words.shape[0], emb.shape[0]), emb.shape[1]
    if dim > words.shape[1] or tokenizer.convert_ids_to_tokens(n - 1) is None:
        return 0
    centred = words - words.mean(0, keepdim=True)
    torch.manual_seed(seed)
    _, _, v = torch.pca_lowrank(centred, q=dim, center=False, niter=4)
    reduced = centred @ v[:, :dim]
    std = float(emb[:n].std())
    emb[:n] = (reduced / reduced.std() * std).to(emb.dtype)
    return n

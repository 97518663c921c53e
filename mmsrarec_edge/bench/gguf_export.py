"""A Qwen2 / Llama text decoder (transformers, torch) -> an F32 GGUF file for llama.cpp, with the `gguf` package.

Why not llama.cpp's own `convert_hf_to_gguf.py`: it ships only in llama-cpp-python's sdist and insists on a known
tokenizer (it hashes the pre-tokenizer), and the recommender's tokenizer is the embedded MiniLM WordPiece. The scale
ladder feeds llama.cpp token ids (the same ids every engine scores), so the file carries no vocabulary:
`tokenizer.ggml.model = "none"` with `<arch>.vocab_size` (llama.cpp's "no vocab" models, llama-vocab.cpp). Tensors and
hyper-parameters follow convert_hf_to_gguf.py's Qwen2Model / LlamaModel: names from gguf's tensor-name map, Llama's
q/k projections permuted back to llama.cpp's interleaved rotary layout (Qwen2 uses the NEOX layout: no permutation),
a tied LM head left out (llama.cpp reuses token_embd). F32 throughout, so the quantized files (llama.cpp's own
`llama_model_quantize`, peers.py) start from the exact weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import UserError


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: HF's rotate-half layout -> llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(lm, out: Path, name: str = "mmsrarec-ladder") -> Path:
    """Write `lm` (Qwen2ForCausalLM or LlamaForCausalLM) as an F32 GGUF at `out`; returns `out`."""
    import gguf

    cfg = lm.config
    archs = {"qwen2": gguf.MODEL_ARCH.QWEN2, "llama": gguf.MODEL_ARCH.LLAMA}
    if cfg.model_type not in archs:
        raise UserError(f"no GGUF writer for decoder type {cfg.model_type!r}", f"supported: {sorted(archs)}")
    arch = archs[cfg.model_type]
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(name)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(cfg.num_attention_heads))
    w.add_head_count_kv(int(cfg.num_key_value_heads))
    w.add_key_length(int(head_dim))
    w.add_value_length(int(head_dim))
    w.add_rope_dimension_count(int(head_dim))
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(cfg.vocab_size))
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_tokenizer_model("none")
    names = gguf.get_tensor_name_map(arch, int(cfg.num_hidden_layers))
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, t in lm.state_dict().items():
        if (hf_name == "lm_head.weight" and tied) or "rotary_emb" in hf_name:
            continue
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise UserError(f"GGUF: no llama.cpp tensor name for {hf_name}")
        data = t.detach().float().numpy()
        if cfg.model_type == "llama" and hf_name.endswith("q_proj.weight"):
            data = _permute(data, int(cfg.num_attention_heads))
        elif cfg.model_type == "llama" and hf_name.endswith("k_proj.weight"):
            data = _permute(data, int(cfg.num_key_value_heads))
        w.add_tensor(gname, np.ascontiguousarray(data, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out)
    return out

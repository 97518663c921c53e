"""Benchmark peers that are not our runtime, each doing our job (shared prefix, C candidate suffixes, p(yes) at each
suffix's last token) the way its own users would:
- optimum's ORTModelForCausalLM scoring one full prompt per candidate;
- llama.cpp (llama-cpp-python's low-level API): prefix once, `llama_memory_seq_cp` to every candidate's sequence,
  all suffixes in one `llama_decode` (LlamaCppScorer; GGUF files from gguf_export.py, quantized by llama.cpp);
- onnxruntime-genai (its model builder's int4/int8/fp32 graphs): prefix once, then per candidate append the suffix,
  read the logits, rewind to the prefix (OrtGenaiScorer).

optimum-onnx exports text decoders only (no LLaVA), so the peer takes the recommender's language model and LM head
out of the LLaVA wrapper into a plain `*ForCausalLM` with identical weights. That is exact for text-only prompts
(the recommender's prompt carries keywords, not pixels); prompts with `<image>` slots are refused rather than scored
wrongly. The PyTorch peers (naive and prefix-sharing) live with the recommender's torch scoring code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.scores import yes_probability


def extract_text_lm(llava):
    """LLaVA -> LlamaForCausalLM / Qwen2ForCausalLM with the same decoder and LM-head weights."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_config(llava.config.text_config)
    state = {f"model.{k}": v for k, v in llava.model.language_model.state_dict().items()}
    state.update({f"lm_head.{k}": v for k, v in llava.lm_head.state_dict().items()})
    result = lm.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"text LM extraction mismatch: {result}")
    return lm.eval()


class OptimumPerCandidate:
    """optimum ORTModelForCausalLM, one full prompt (prefix + candidate suffix) per forward call."""

    name = "optimum ORTModelForCausalLM (per candidate)"

    def __init__(self, llava, tokenizer, workdir: Path, yes_id: int, no_id: int, image_token_id: int | None = None):
        from optimum.onnxruntime import ORTModelForCausalLM

        workdir = Path(workdir)
        lm_dir = workdir / "text_lm"
        extract_text_lm(llava).save_pretrained(lm_dir)
        tokenizer.save_pretrained(lm_dir)
        self.model = ORTModelForCausalLM.from_pretrained(lm_dir, export=True, use_cache=True, use_io_binding=False)
        self.yes_id, self.no_id = yes_id, no_id
        self.image_token_id = image_token_id

    @classmethod
    def load(cls, onnx_dir: Path, yes_id: int, no_id: int, threads: int | None = None,
             image_token_id: int | None = None) -> "OptimumPerCandidate":
        """From an `export_optimum` folder, with `threads` intra-op threads (None: ONNX Runtime's default)."""
        self = cls.__new__(cls)
        self.model = _load_optimum(Path(onnx_dir), threads)
        self.yes_id, self.no_id, self.image_token_id = int(yes_id), int(no_id), image_token_id
        return self

    def score(self, prefix_ids: list[int], suffixes: list[list[int]]) -> np.ndarray:
        import torch

        if self.image_token_id is not None and self.image_token_id in prefix_ids + [t for s in suffixes for t in s]:
            raise UserError("the optimum peer scores text-only prompts; this prompt has image slots")
        out = np.empty(len(suffixes))
        with torch.no_grad():
            for c, suf in enumerate(suffixes):
                ids = torch.tensor([prefix_ids + suf])
                logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
                out[c] = yes_probability(float(logits[self.yes_id]), float(logits[self.no_id]))
        return out


def export_optimum(lm_dir: Path, out: Path) -> Path:
    """optimum's ONNX export of a plain *ForCausalLM folder (e.g. ladder.extract_decoder_folder), once, so that a
    benchmark can load it per thread count (`OptimumPerCandidate.load`) instead of exporting in every process."""
    from optimum.onnxruntime import ORTModelForCausalLM

    out = Path(out)
    if not (out / "config.json").is_file():
        model = ORTModelForCausalLM.from_pretrained(lm_dir, export=True, use_cache=True, use_io_binding=False)
        model.save_pretrained(out)
    return out


def _load_optimum(onnx_dir: Path, threads: int | None):
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    return ORTModelForCausalLM.from_pretrained(onnx_dir, use_cache=True, use_io_binding=False, session_options=so)



# ------------------------------------------------------------------------------------------------ llama.cpp

GGUF_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
               "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


_QUIET: list = []


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise UserError("the llama.cpp peer needs llama-cpp-python", "pip install 'mmsrarec-edge[bench]'") from exc
    if not _QUIET:  # llama.cpp logs every model load to stderr; keep errors only (the callback must stay alive)
        def quiet(level, text, user_data):
            if level == 3:  # GGML_LOG_LEVEL_ERROR
                sys.stderr.write(text.decode("utf-8", "replace"))

        _QUIET.append(llama_cpp.llama_log_callback(quiet))
        llama_cpp.llama_log_set(_QUIET[0], None)
    return llama_cpp


def quantize_gguf(src: Path, dst: Path, kind: str, threads: int = 2) -> Path:
    """llama.cpp's own quantizer (`llama_model_quantize`, what the `llama-quantize` tool calls): F32 GGUF -> kind."""
    import ctypes

    llama_cpp = _llama_cpp()
    if kind not in GGUF_FTYPES:
        raise UserError(f"unknown GGUF quantization {kind!r}", f"choose one of {', '.join(GGUF_FTYPES)}")
    dst = Path(dst)
    if dst.is_file():
        return dst
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, GGUF_FTYPES[kind])
    params.nthread = int(threads)
    tmp = dst.with_name(dst.name + ".partial")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {kind}) returned {rc}")
    tmp.replace(dst)
    return dst


class LlamaCppScorer:
    """llama.cpp through llama-cpp-python's low-level API, used as an expert would for our job: one context with a
    unified KV cache and `n_seq_max` >= candidates + 1; per request the prefix is decoded once in sequence 0 (no
    logits), `llama_memory_seq_cp` shares its cells with every candidate's sequence 1..C, ONE `llama_decode` holds all
    suffix tokens (each tagged with its candidate's sequence, logits requested at its last token only), p(yes) comes
    from `llama_get_logits_ith`, and every sequence is removed afterwards (`llama_memory_seq_rm`). Suffixes beyond
    `n_seq_max - 1` candidates go in further rounds over the same prefix cells.

    `kv_f32` keeps the KV cache in fp32 (the F32 GGUF row: an fp32 comparison end to end); otherwise llama.cpp's
    default f16 cache."""

    def __init__(self, gguf_path: Path, yes_id: int, no_id: int, threads: int, n_ctx: int = 2048,
                 n_seq_max: int = 22, kv_f32: bool = False):
        import numpy as np

        ll = self.ll = _llama_cpp()
        ll.llama_backend_init()
        mp = ll.llama_model_default_params()
        self.model = ll.llama_model_load_from_file(str(gguf_path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        cp = ll.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = int(n_ctx)
        cp.n_seq_max = int(n_seq_max)
        cp.n_outputs_max = int(n_seq_max)  # logits rows kept per ubatch: one per candidate, not n_batch x vocab
        cp.n_threads = cp.n_threads_batch = int(threads)
        cp.kv_unified = True
        cp.no_perf = True
        if kv_f32:
            cp.type_k = cp.type_v = ll.GGML_TYPE_F32
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {gguf_path}")
        self.mem = ll.llama_get_memory(self.ctx)
        self.n_ctx, self.n_seq_max = int(n_ctx), int(n_seq_max)
        self.batch = ll.llama_batch_init(self.n_ctx, 0, 1)
        b = self.batch
        # numpy views over the batch's C arrays: filling ~1k entries per request without a Python loop per field
        self._tok = np.ctypeslib.as_array(b.token, shape=(self.n_ctx,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(self.n_ctx,))
        self._nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_ctx,))
        self._logits = np.ctypeslib.as_array(b.logits, shape=(self.n_ctx,))
        self._nseq[:] = 1
        self.yes_id, self.no_id = int(yes_id), int(no_id)
        vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(vocab))

    def _decode(self, tokens, positions, seqs, want) -> None:
        n = len(tokens)
        if n > self.n_ctx:
            raise ValueError(f"{n} tokens in one batch exceed n_batch {self.n_ctx}")
        self._tok[:n], self._pos[:n], self._logits[:n] = tokens, positions, want
        seq_id = self.batch.seq_id
        for i, s in enumerate(seqs):
            seq_id[i][0] = int(s)
        self.batch.n_tokens = n
        rc = self.ll.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} (n_ctx {self.n_ctx} too small for the request?)")

    def score(self, prefix: list[int], suffixes: list[list[int]]) -> np.ndarray:
        import numpy as np

        ll, mem = self.ll, self.mem
        P = len(prefix)
        out = np.empty(len(suffixes))
        per_round = self.n_seq_max - 1
        try:
            self._decode(prefix, np.arange(P), [0] * P, np.zeros(P, np.int8))
            for start in range(0, len(suffixes), per_round):
                chunk = suffixes[start:start + per_round]
                toks, pos, seqs, want, last = [], [], [], [], []
                for k, s in enumerate(chunk, start=1):
                    ll.llama_memory_seq_cp(mem, 0, k, -1, -1)
                    toks.extend(s)
                    pos.extend(range(P, P + len(s)))
                    seqs.extend([k] * len(s))
                    want.extend([0] * (len(s) - 1) + [1])
                    last.append(len(toks) - 1)
                self._decode(toks, pos, seqs, np.asarray(want, np.int8))
                for r, i in enumerate(last):
                    row = ll.llama_get_logits_ith(self.ctx, i)
                    out[start + r] = yes_probability(float(row[self.yes_id]), float(row[self.no_id]))
                for k in range(1, len(chunk) + 1):
                    ll.llama_memory_seq_rm(mem, k, -1, -1)
        finally:
            ll.llama_memory_seq_rm(mem, -1, -1, -1)  # the prefix (sequence 0) and anything a failure left
        return out

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.ll.llama_batch_free(self.batch)
            self.ll.llama_free(self.ctx)
            self.ll.llama_model_free(self.model)
            self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ------------------------------------------------------------------------------------------------ onnxruntime-genai

_GENAI_SHIM = """
import runpy, sys
import transformers as t
# onnxruntime-genai 0.18's builder imports two transformers 5 classes at module level (for architectures we do not
# build); transformers is pinned to 4.57 here, so stand-ins let the Qwen2/Llama builders load.
for n in ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"):
    hasattr(t, n) or setattr(t, n, type(n, (), {}))
src, cache, jobs = sys.argv[1], sys.argv[2], sys.argv[3:]
for k in range(0, len(jobs), 2):  # (precision, output folder) pairs in one process: the imports are paid once
    sys.argv = ["builder", "-i", src, "-o", jobs[k + 1], "-p", jobs[k], "-e", "cpu", "-c", cache]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
"""


def build_genai(lm_dir: Path, outs: dict[str, Path], cache: Path, log: Path | None = None) -> dict[str, Path]:
    """onnxruntime-genai's model builder on a plain decoder folder, once per precision in `outs` (precision ->
    folder): what `python -m onnxruntime_genai.models.builder -i LM_DIR -o OUT -p {fp32,int8,int4} -e cpu` writes
    (the builder's defaults otherwise), all in one process. The folder's config needs a rope_scaling dict with
    transformers 4.57 (ladder.extract_decoder_folder(genai_compat=True)). Folders that exist are kept."""
    import shutil
    import subprocess

    todo = {p: Path(o) for p, o in outs.items() if not (Path(o) / "genai_config.json").is_file()}
    if todo:
        tmps = {p: o.with_name(o.name + ".partial") for p, o in todo.items()}
        for t in tmps.values():
            shutil.rmtree(t, ignore_errors=True)
        cmd = [sys.executable, "-c", _GENAI_SHIM, str(lm_dir), str(cache)]
        for p, t in tmps.items():
            cmd += [p, str(t)]
        with open(log or os.devnull, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        for p, t in tmps.items():
            if rc != 0 or not (t / "genai_config.json").is_file():
                raise RuntimeError(f"onnxruntime-genai builder failed for {lm_dir} ({p}, exit {rc}); see {log}")
            t.replace(todo[p])
    return {p: Path(o) for p, o in outs.items()}


class OrtGenaiScorer:
    """onnxruntime-genai, batch 1: it cannot share a prefix across batch rows (append_tokens once per generator
    when batch > 1), so the prefix is appended once per request and each candidate is `append_tokens(suffix)` ->
    logits at the last position -> `rewind_to(len(prefix))`."""

    def __init__(self, model_dir: Path, yes_id: int, no_id: int, threads: int, max_length: int = 1024):
        import json

        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise UserError("the onnxruntime-genai peer needs onnxruntime-genai",
                            "pip install 'mmsrarec-edge[bench]'") from exc
        cfg = og.Config(str(model_dir))
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": int(threads), "inter_op_num_threads": 1}}}}))
        self.model = og.Model(cfg)
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=int(max_length))
        self.gen = og.Generator(self.model, params)
        self.yes_id, self.no_id = int(yes_id), int(no_id)

    def score(self, prefix: list[int], suffixes: list[list[int]]) -> np.ndarray:
        g = self.gen
        out = np.empty(len(suffixes))
        if g.token_count():
            g.rewind_to(0)
        g.append_tokens(list(prefix))
        P = len(prefix)
        for c, s in enumerate(suffixes):
            g.append_tokens(list(s))
            logits = np.asarray(g.get_logits())[0, -1]
            out[c] = yes_probability(float(logits[self.yes_id]), float(logits[self.no_id]))
            g.rewind_to(P)
        return out

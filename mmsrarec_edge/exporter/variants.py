"""Precision variants of an exported fp32 graph: int8 (dynamic quantization, CPU), int4 (weight-only, CPU), fp16 (GPU).

int8: `quant_pre_process(..., skip_symbolic_shape=True)` first (without it, quantize_dynamic on a dynamo export can
quantize nothing), then `quantize_dynamic` with int8 weights; we then count the quantized nodes and refuse a
"quantized" graph that has none. fp16: onnxruntime.transformers' float16 converter (no extra dependency) with the
numerically fragile ops kept in fp32 -- normalisation statistics (LayerNorm, and RMSNorm's
Pow/ReduceMean/Sqrt/Reciprocal as exported at opset 17), Softmax -- and graph inputs/outputs kept fp32, so the
runtime feeds every precision the same arrays.
int4: onnxruntime's MatMulNBits quantizer, round-to-nearest, symmetric blocks of INT4_BLOCK weights along the input
axis (llama.cpp's Q4_0 layout: 32 weights share one scale), MatMul -> MatMulNBits and the embedding Gather ->
GatherBlockQuantized. INT4_ACCURACY_LEVEL picks the kernel's compute type; chosen by measurement on the CPUs we ship
for (../shared/FINDINGS.md, 0.5B scorer MLP shape, 2 threads, AVX2 without VNNI): accuracy level 0 (fp32 compute over
dequantized blocks) 124-129 GFLOP/s, level 4 (int8 compute) 99-118, fp32 MatMul 103-147, dynamic int8 184-235. So on
such a CPU int4 buys size (weights /8 vs fp32, /2 vs int8), not prefill speed, and dynamic int8 stays the fast path;
weight-only int8 (MatMulNBits 8 bits, 83-101 GFLOP/s) is not offered: it is slower than both. On AVX-512-VNNI or ARM
dot-product CPUs level 4 can win; it is a constant here, not yet a profile setting (re-measure before changing it).
"""

from __future__ import annotations

import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import onnx

from ..core.errors import UserError

# ONNX ops kept in fp32 in fp16 graphs (and the TensorRT precision constraints mirror them).
FP32_OPS = ["LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "Softmax", "ReduceMean",
            "Pow", "Sqrt", "Reciprocal"]
QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear", "DequantizeLinear",
                 "QuantizeLinear", "ConvInteger", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat",
                 "GatherBlockQuantized", "QAttention", "MatMulNBits"}
INT4_BLOCK = 32
LIGHT_QUANT_BYTES = 256 * 2**20  # int8 of larger legacy graphs is streamed (to_int8)
INT4_ACCURACY_LEVEL = 0
# Graphs over this size keep their weights in one side file `<name>.onnx.data`, each tensor at a page-aligned offset
# (DATA_ALIGN): protobuf cannot hold more than 2 GB, and onnxruntime memory-maps aligned external weights instead of
# parsing and copying them. Measured on the 0.47B int8 scorer graph (359 MB, 2 threads): session creation 1.71 s and
# 458 MB RSS with aligned external data, 2.57 s and 741 MB inline.
EXTERNAL_DATA_BYTES = 64 * 2**20
DATA_ALIGN = 4096


class ExportError(UserError):
    """An exported graph is wrong (failed a parity gate, did not quantize, ...): the export stops."""


def save_onnx(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save `model` (its external data loaded); weights go to `<path>.data`, page-aligned, when the model is over
    EXTERNAL_DATA_BYTES. Returns the files written. Moves the weights out of `model` (it is not reusable)."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    if model.ByteSize() > EXTERNAL_DATA_BYTES:
        with open(data, "wb") as f:
            for t in model.graph.initializer:
                if len(t.raw_data) >= 1024:
                    raw = t.raw_data
                    t.ClearField("raw_data")
                    write_external(f, raw, t, data.name)
        onnx.save_model(model, str(path))
        return [path, data]
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path))
    return [path]


def write_external(f, buffer, t: onnx.TensorProto, location: str) -> None:
    """Append `buffer` (bytes, or a numpy array written without a copy) to the open data file `f` at the next
    DATA_ALIGN offset, and point initializer `t` at it: the one layout every large graph of a bundle has."""
    offset = f.tell()
    if offset % DATA_ALIGN:
        f.write(b"\0" * (DATA_ALIGN - offset % DATA_ALIGN))
        offset = f.tell()
    if hasattr(buffer, "tofile"):
        buffer.tofile(f)
        n = buffer.nbytes
    else:
        f.write(buffer)
        n = len(buffer)
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(n))):
        t.external_data.add(key=k, value=v)


def drop_unused_initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Keep only the initializers a node or a graph output reads; returns them."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    return kept


def realign(path: Path) -> None:
    """Rewrite a graph that another tool saved (onnxruntime's quantizer) in save_onnx's layout."""
    path = Path(path)
    if sum(f.stat().st_size for f in onnx_files(path)) > EXTERNAL_DATA_BYTES or onnx_files(path) != [path]:
        model = onnx.load(str(path))
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            tmp_path = Path(tmp) / path.name
            save_onnx(model, tmp_path)
            del model
            old_data = path.with_name(path.name + ".data")
            old_data.unlink(missing_ok=True)
            for f in onnx_files(tmp_path):
                f.replace(path.with_name(f.name))


def onnx_files(path: Path) -> list[Path]:
    """The .onnx file and its external data file, if it has one."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def quantized_node_count(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type in QUANTIZED_OPS)


@contextmanager
def _quiet_quantizers():
    """onnxruntime's quantizers log advice at WARNING through the root logger (pre-processing, opset 21 for int4):
    handled here (the pass above, the opset check in to_int4), so not shown to users."""
    import logging

    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps it otherwise): between the export's steps, so
    that one graph's buffers do not add to the next one's peak."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def to_int8(src: Path, dst: Path, per_channel: bool = False, legacy: bool = False) -> dict:
    """fp32 graph -> int8 dynamic-quantized graph. Raises ExportError if nothing got quantized."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    src, dst = Path(src), Path(dst)
    big = src.stat().st_size > EXTERNAL_DATA_BYTES or onnx_files(src) != [src]
    streamed = 0
    if legacy and sum(f.stat().st_size for f in onnx_files(src)) > LIGHT_QUANT_BYTES:
        # A large legacy-exporter graph: quantized one weight at a time (_stream_int8), the same graph quantize_dynamic
        # writes without loading the fp32 graph whole. Small graphs keep onnxruntime's path: quant_pre_process's
        # fusions shrink their node bytes, which at toy size are a good part of the file. So do graphs without
        # MatMul weights (an embedding table's Gather).
        streamed = _stream_int8(src, dst)
    if not streamed:
        with tempfile.TemporaryDirectory(dir=dst.parent) as tmp, warnings.catch_warnings(), _quiet_quantizers():
            warnings.simplefilter("ignore")
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, save_as_external_data=big,
                              all_tensors_to_one_file=True)
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                             use_external_data_format=big)
    realign(dst)
    model = onnx.load(str(dst), load_external_data=False)
    count = quantized_node_count(model)
    if count == 0:
        dst.unlink(missing_ok=True)
        raise ExportError(f"int8 quantization of {src.name} produced no quantized nodes",
                          "the graph has no MatMul/Gather/Conv weights the dynamic quantizer recognises")
    return {"quantized_nodes": count}


def _weights_as_matmul_inputs(model: onnx.ModelProto, base_dir: Path | None = None) -> dict:
    """Rewrite in place so that every weight reaches its MatMul directly, as the weight-only quantizer needs:
    - the legacy exporter passes a weight used twice (the scorer's prefix and suffix paths share every layer) to its
      second consumer through an Identity node: consumers now read the initializer itself;
    - Linear layers with a bias on 2-D inputs are exported as Gemm(A, W, b, transB=1): now MatMul(A, W^T) + b, with
      one transposed initializer shared by every such Gemm of W.
    Returns counts of what changed."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in init}
    outputs = {o.name for o in graph.output}
    alias = {k: v for k, v in alias.items() if k not in outputs}
    transposed: dict[str, str] = {}
    # Transpose(weight) nodes the exporter did not fold (a weight it could not fold per consumer): folded here, once
    folded = 0
    for n in graph.node:
        src = alias.get(n.input[0], n.input[0]) if n.input else None
        if n.op_type == "Transpose" and src in init and n.output[0] not in outputs:
            perm = next((list(helper.get_attribute_value(a)) for a in n.attribute if a.name == "perm"), None)
            key = src + "_T" + ("" if perm is None else "".join(map(str, perm)))
            if key not in init:
                t = numpy_helper.from_array(np.ascontiguousarray(np.transpose(_array(init[src], base_dir), perm)),
                                            key)
                graph.initializer.append(t)
                init[key] = t
            alias[n.output[0]] = key
            folded += 1
    nodes, gemms = [], 0
    for n in graph.node:
        if n.op_type in ("Identity", "Transpose") and n.output[0] in alias:
            continue
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type == "Gemm" and len(n.input) >= 2 and n.input[1] in init and attrs.get("transA", 0) == 0
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0):
            w = n.input[1]
            if attrs.get("transB", 0):
                if w not in transposed:
                    t = numpy_helper.from_array(np.ascontiguousarray(_array(init[w], base_dir).T), w + "_T")
                    graph.initializer.append(t)
                    init[t.name] = t
                    transposed[w] = t.name
                w = transposed[w]
            out = n.output[0]
            if len(n.input) > 2 and n.input[2]:
                mid = out + "_matmul"
                nodes.append(helper.make_node("MatMul", [n.input[0], w], [mid], name=n.name + "_MatMul"))
                nodes.append(helper.make_node("Add", [mid, n.input[2]], [out], name=n.name + "_Add"))
            else:
                nodes.append(helper.make_node("MatMul", [n.input[0], w], [out], name=n.name + "_MatMul"))
            gemms += 1
            continue
        nodes.append(n)
    graph.ClearField("node")
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    return {"aliases_removed": len(alias) - folded, "transposes_folded": folded, "gemms_rewritten": gemms}


def _array(t: onnx.TensorProto, base_dir: Path | None):
    """One initializer as numpy, read from its external data file (under `base_dir`) when it has one."""
    from onnx import numpy_helper

    return numpy_helper.to_array(t, str(base_dir) if base_dir is not None else "")


def _matmul_weight(node: onnx.NodeProto, init: dict) -> tuple[str | None, onnx.TensorProto | None]:
    """(name, tensor) of a MatMul's 2-D fp32 weight initializer; (name or None, None) for any other node."""
    w = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
    t = init.get(w) if w else None
    if t is None or t.data_type != onnx.TensorProto.FLOAT or len(t.dims) != 2:
        return w, None
    return w, t


def _inline(t: onnx.TensorProto, base: Path) -> None:
    """Load an initializer's external data into it (it moves into the new file)."""
    from onnx.external_data_helper import load_external_data_for_tensor

    if t.data_location == onnx.TensorProto.EXTERNAL:
        load_external_data_for_tensor(t, str(base))
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]


def _finish_streamed(model: onnx.ModelProto, nodes: list, base: Path, dst: Path) -> None:
    """A streamed quantizer's last step: the new nodes, only the initializers they use (what stays fp32 -- norms,
    biases, the yes/no rows -- moves into the new file), the contrib-op domain, and save_onnx's layout."""
    from onnx import helper

    graph = model.graph
    graph.ClearField("node")
    graph.node.extend(nodes)
    for t in drop_unused_initializers(graph):
        _inline(t, base)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    save_onnx(model, dst)


def _stream_int8(src: Path, dst: Path) -> int:
    """Dynamic int8 for a large graph, one weight at a time: the pattern onnxruntime's quantize_dynamic writes
    (DynamicQuantizeLinear on the activation, MatMulInteger with the int8 weight, Cast, Mul by the product of the
    two scales; fused into DynamicQuantizeMatMul when the session opens), with its weight rule: symmetric per-tensor
    int8, scale = max|W| / 127, zero point 0, round half to even. The fp32 graph is never loaded whole: at 0.47B
    quantize_dynamic held it about three times (+4.4 GB). Returns the number of MatMuls quantized."""
    import numpy as np
    from onnx import helper, numpy_helper

    model = onnx.load(str(src), load_external_data=False)
    base = src.parent
    _weights_as_matmul_inputs(model, base)
    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    quantized: dict[str, tuple[str, str, str]] = {}
    activations: dict[str, tuple[str, str, str]] = {}
    nodes, count = [], 0
    for n in graph.node:
        w, t = _matmul_weight(n, init)
        if t is None:
            nodes.append(n)
            continue
        if w not in quantized:
            array = _array(t, base)
            scale = np.float32(max(float(np.abs(array).max()), 1e-12) / 127.0)
            q = np.clip(np.rint(array / scale), -127, 127).astype(np.int8)
            del array
            graph.initializer.extend([numpy_helper.from_array(q, w + "_quantized"),
                                      numpy_helper.from_array(np.array(scale, np.float32), w + "_scale"),
                                      numpy_helper.from_array(np.array(0, np.int8), w + "_zero_point")])
            quantized[w] = (w + "_quantized", w + "_scale", w + "_zero_point")
        a = n.input[0]
        if a not in activations:
            activations[a] = (a + "_quantized", a + "_scale", a + "_zero_point")
            nodes.append(helper.make_node("DynamicQuantizeLinear", [a], list(activations[a]),
                                          name=a + "_QuantizeLinear"))
        (aq, ascale, azp), (wq, wscale, wzp) = activations[a], quantized[w]
        out = n.output[0]
        nodes += [helper.make_node("MatMulInteger", [aq, wq, azp, wzp], [out + "_output_quantized"],
                                   name=n.name + "_quant"),
                  helper.make_node("Cast", [out + "_output_quantized"], [out + "_output_quantized_cast_output"],
                                   to=onnx.TensorProto.FLOAT, name=n.name + "_quant_cast"),
                  helper.make_node("Mul", [ascale, wscale], [n.name + "_quant_scales_mul:0"],
                                   name=n.name + "_quant_scales_mul"),
                  helper.make_node("Mul", [out + "_output_quantized_cast_output", n.name + "_quant_scales_mul:0"],
                                   [out], name=n.name + "_quant_output_scale_mul")]
        count += 1
    if count == 0:  # nothing to stream (an embedding table): the caller takes onnxruntime's path
        return 0
    _finish_streamed(model, nodes, base, dst)
    return count


def _stream_int4(src: Path, dst: Path, block_size: int, accuracy_level: int) -> int:
    """to_int4 for a large graph, one weight at a time: each MatMul weight is loaded from the external data file,
    quantized by onnxruntime's own block quantizer (DefaultWeightOnlyQuantizer.quantize_matmul: the bytes
    MatMulNBitsQuantizer writes) and dropped; a weight shared by two MatMuls is quantized once. Returns the number of
    MatMulNBits nodes (0: nothing to stream, nothing written)."""
    from onnx import helper
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    model = onnx.load(str(src), load_external_data=False)
    base = src.parent
    _weights_as_matmul_inputs(model, base)
    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level,
                                          op_types_to_quantize=("MatMul",), bits=4)
    quantizer = DefaultWeightOnlyQuantizer(config)
    first: dict[str, onnx.NodeProto] = {}
    nodes, count = [], 0

    with warnings.catch_warnings(), _quiet_quantizers():
        warnings.simplefilter("ignore")
        for n in graph.node:
            w, t = _matmul_weight(n, init)
            if t is None:
                nodes.append(n)
                continue
            if w in first:
                done = first[w]
                attrs = {a.name: helper.get_attribute_value(a) for a in done.attribute}
                nodes.append(helper.make_node(done.op_type, [n.input[0], *done.input[1:]], list(n.output),
                                              name=n.name + "_Q4", domain=done.domain, **attrs))
            else:
                _inline(t, base)
                out = quantizer.quantize_matmul(n, [graph])
                t.ClearField("raw_data")  # the fp32 weight is done with
                if len(out) != 1 or out[0].op_type != "MatMulNBits":
                    raise ExportError(f"int4: unexpected quantizer output for {n.name}: {[o.op_type for o in out]}")
                first[w] = out[0]
                nodes.extend(out)
            count += 1
    if count == 0:
        return 0
    _finish_streamed(model, nodes, base, dst)
    return count


def _dedupe_initializers(model: onnx.ModelProto) -> None:
    """The quantizer writes a shared weight's quantized tensors once per consumer, under the same name: keep one."""
    seen, kept = set(), []
    for t in model.graph.initializer:
        if t.name not in seen:
            seen.add(t.name)
            kept.append(t)
    model.graph.ClearField("initializer")
    model.graph.initializer.extend(kept)


def to_int4(src: Path, dst: Path, block_size: int = INT4_BLOCK, accuracy_level: int = INT4_ACCURACY_LEVEL) -> dict:
    """fp32 graph -> int4 weight-only graph (MatMulNBits / GatherBlockQuantized). Raises ExportError if nothing got
    quantized. Graph I/O stays fp32 (the runtime feeds every precision the same arrays)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    src, dst = Path(src), Path(dst)
    if sum(f.stat().st_size for f in onnx_files(src)) > LIGHT_QUANT_BYTES:
        count = _stream_int4(src, dst, block_size, accuracy_level)
        if count:
            return {"quantized_nodes": count, "block_size": block_size, "accuracy_level": accuracy_level}
    model = onnx.load(str(src))
    _weights_as_matmul_inputs(model)
    # MatMuls where the graph has them (decoders: their token embeddings live in the embed graph). The embedding
    # graph's Gather otherwise: GatherBlockQuantized needs opset 21, which the quantizer then sets -- harmless for a
    # lone Gather, invalid for decoders (ReduceMean's `axes` became an input at opset 18), hence one or the other.
    init = {t.name: t for t in model.graph.initializer}
    has_matmul = any(_matmul_weight(n, init)[1] is not None for n in model.graph.node)
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level,
                                          op_types_to_quantize=("MatMul",) if has_matmul else ("Gather",), bits=4)
    with warnings.catch_warnings(), _quiet_quantizers():
        warnings.simplefilter("ignore")
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True,
                                         accuracy_level=accuracy_level, algo_config=config)
        del model
        quantizer.process()
    out = quantizer.model.model
    _dedupe_initializers(out)
    count = quantized_node_count(out)
    if count == 0:
        raise ExportError(f"int4 quantization of {src.name} produced no quantized nodes",
                          "the graph has no MatMul/Gather weights the weight-only quantizer recognises")
    save_onnx(out, dst)
    return {"quantized_nodes": count, "block_size": block_size, "accuracy_level": accuracy_level}


def to_fp16(src: Path, dst: Path) -> dict:
    """fp32 graph -> fp16 weights/compute, FP32_OPS and graph I/O kept in fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp16 = convert_float_to_float16(model, keep_io_types=True,
                                        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS)))
    kept = sum(1 for n in fp16.graph.node if n.op_type in FP32_OPS)
    save_onnx(fp16, dst)
    return {"fp32_nodes_kept": kept}


def make_variant(src: Path, precision: str, dst: Path, exporter: str = "dynamo") -> dict:
    if precision == "int8":
        return to_int8(src, dst, legacy=exporter == "legacy")
    if precision == "int4":
        return to_int4(src, dst)
    if precision == "fp16":
        return to_fp16(src, dst)
    raise ValueError(f"no variant conversion for {precision!r}")

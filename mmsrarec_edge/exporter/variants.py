"""Precision variants of an exported fp32 graph: int8 (dynamic quantization, CPU) and fp16 (GPU).

int8: `quant_pre_process(..., skip_symbolic_shape=True)` first (without it, quantize_dynamic on a dynamo export can
quantize nothing), then `quantize_dynamic` with int8 weights; we then count the quantized nodes and refuse a
"quantized" graph that has none. fp16: onnxruntime.transformers' float16 converter (no extra dependency) with the
numerically fragile ops kept in fp32 -- normalisation statistics (LayerNorm, and RMSNorm's
Pow/ReduceMean/Sqrt/Reciprocal as exported at opset 17), Softmax -- and graph inputs/outputs kept fp32, so the
runtime feeds every precision the same arrays.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx

from ..core.errors import UserError

# ONNX ops kept in fp32 in fp16 graphs (and the TensorRT precision constraints mirror them).
FP32_OPS = ["LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "Softmax", "ReduceMean",
            "Pow", "Sqrt", "Reciprocal"]
QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear", "DequantizeLinear",
                 "QuantizeLinear", "ConvInteger", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat",
                 "GatherBlockQuantized", "QAttention"}
# Large models exceed protobuf's 2 GB limit: weights then go to a side file `<name>.onnx.data`.
EXTERNAL_DATA_BYTES = 1_500_000_000


class ExportError(UserError):
    """An exported graph is wrong (failed a parity gate, did not quantize, ...): the export stops."""


def save_onnx(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save `model`; weights go to `<path>.data` when the model is too big for one protobuf. Returns files written."""
    path = Path(path)
    if model.ByteSize() > EXTERNAL_DATA_BYTES:
        data = path.with_name(path.name + ".data")
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def onnx_files(path: Path) -> list[Path]:
    """The .onnx file and its external data file, if it has one."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def quantized_node_count(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type in QUANTIZED_OPS)


def to_int8(src: Path, dst: Path, per_channel: bool = False) -> dict:
    """fp32 graph -> int8 dynamic-quantized graph. Raises ExportError if nothing got quantized."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    src, dst = Path(src), Path(dst)
    big = src.stat().st_size > EXTERNAL_DATA_BYTES or onnx_files(src) != [src]
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, save_as_external_data=big,
                          all_tensors_to_one_file=True)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                         use_external_data_format=big)
    model = onnx.load(str(dst), load_external_data=False)
    count = quantized_node_count(model)
    if count == 0:
        dst.unlink(missing_ok=True)
        raise ExportError(f"int8 quantization of {src.name} produced no quantized nodes",
                          "the graph has no MatMul/Gather/Conv weights the dynamic quantizer recognises")
    return {"quantized_nodes": count}


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


def make_variant(src: Path, precision: str, dst: Path) -> dict:
    if precision == "int8":
        return to_int8(src, dst)
    if precision == "fp16":
        return to_fp16(src, dst)
    raise ValueError(f"no variant conversion for {precision!r}")

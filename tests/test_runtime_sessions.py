"""Execution provider choice, precision choice, TensorRT options and session errors (no GPU needed)."""

import onnxruntime as ort
import pytest

from mmsrarec_edge.core.errors import BundleError, UserError
from mmsrarec_edge.runtime import sessions
from mmsrarec_edge.runtime.sessions import (
    SessionConfig,
    graph_precision_for,
    open_session,
    provider_chain,
    resolve_precision,
    resolve_provider,
)


def test_default_is_the_fastest_available(monkeypatch):
    monkeypatch.setattr(sessions, "tensorrt_present", lambda: True)  # a machine with TensorRT's libraries
    assert resolve_provider(None, ["tensorrt", "cuda", "cpu"]) == "tensorrt"
    assert resolve_provider(None, ["cuda", "cpu"]) == "cuda"
    assert resolve_provider("auto", ["cpu"]) == "cpu"
    # What this machine offers, in preference order, always ends with the CPU.
    here = sessions.available_providers()
    assert here[-1] == "cpu" and resolve_provider(None) == here[0]


@pytest.mark.parametrize("name", ["cpu", "CPU", "CPUExecutionProvider", "cpuexecutionprovider"])
def test_names_are_accepted_in_short_and_full_form(name):
    assert resolve_provider(name, ["cpu"]) == "cpu"


def test_unavailable_provider_names_it_and_what_is_available():
    with pytest.raises(UserError) as e:
        resolve_provider("tensorrt", ["cuda", "cpu"])
    assert "'tensorrt'" in e.value.message and "TensorrtExecutionProvider" in e.value.message
    assert "available here: cuda, cpu" in e.value.hint and "onnxruntime-gpu" in e.value.hint
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UserError, match="'cuda'.*not available"):
            SessionConfig.resolve("cuda")


def test_unknown_provider_and_precision():
    with pytest.raises(UserError, match="unknown execution provider 'rocm'"):
        resolve_provider("rocm", ["cpu"])
    with pytest.raises(UserError, match="unknown precision 'int2'"):
        resolve_precision("int2")
    with pytest.raises(UserError, match="threads must be >= 1"):
        SessionConfig.resolve("cpu", threads=0)


def test_precision_defaults_to_the_bundle_and_falls_back_only_for_pinned_graphs():
    assert SessionConfig.resolve("cpu").precision is None
    assert graph_precision_for(SessionConfig("cpu"), ["int8"], "int8") == "int8"
    assert graph_precision_for(SessionConfig("cpu", "int8"), ["fp32", "int8"], "fp32") == "int8"
    assert graph_precision_for(SessionConfig("cpu", "int8"), ["fp32"], "fp32") == "fp32"  # pinned to fp32
    with pytest.raises(UserError, match="no int8 variant"):  # ... unless no graph of the bundle has int8
        graph_precision_for(SessionConfig("cpu", "int8"), ["fp32"], "fp32", bundle_has=False)
    assert graph_precision_for(SessionConfig("cuda", "fp16"), ["fp32", "fp16"]) == "fp16"
    with pytest.raises(UserError, match="no fp32 variant of recommender.decoder") as e:
        graph_precision_for(SessionConfig("cpu", "fp32"), ["int8"], "int8", "recommender.decoder")
    assert "it has: int8" in e.value.hint
    # TensorRT builds its own fp16 engine from the fp32 graph
    assert graph_precision_for(SessionConfig("tensorrt", "fp16"), ["fp32", "fp16"]) == "fp32"
    assert graph_precision_for(SessionConfig("tensorrt"), ["fp32"], "fp16") == "fp32"


def test_provider_chain_keeps_the_cpu_behind():
    assert provider_chain(SessionConfig("cpu")) == ["CPUExecutionProvider"]
    chain = provider_chain(SessionConfig("tensorrt", "fp16"), {"trt_engine_cache_path": "/x"})
    assert chain[0][0] == "TensorrtExecutionProvider" and chain[-1] == "CPUExecutionProvider"
    assert chain[0][1]["trt_fp16_enable"] == "True" and chain[0][1]["trt_engine_cache_path"] == "/x"


def test_session_options_and_bad_graphs(tmp_path):
    so = sessions.session_options(3)
    assert so.intra_op_num_threads == 3
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(BundleError, match="is missing"):
        open_session(tmp_path / "nope.onnx", SessionConfig("cpu"))
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x01garbage")
    with pytest.raises(BundleError, match="onnxruntime cannot load bad.onnx"):
        open_session(tmp_path / "bad.onnx", SessionConfig("cpu"))


def test_the_automatic_choice_skips_tensorrt_without_its_libraries():
    """onnxruntime-gpu lists TensorRT even where its libraries are absent (as here): the automatic choice is CUDA;
    asking for TensorRT by name still resolves, since the build offers it."""
    from mmsrarec_edge.runtime.sessions import tensorrt_present

    offered = ["tensorrt", "cuda", "cpu"]
    assert resolve_provider(None, offered) == ("tensorrt" if tensorrt_present() else "cuda")
    assert resolve_provider("tensorrt", offered) == "tensorrt"
    assert resolve_provider(None, ["cpu"]) == "cpu"

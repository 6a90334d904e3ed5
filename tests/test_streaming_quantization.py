"""Streaming int8 Q/DQ for graphs with external weights, held to ONNX Runtime's own static quantizer."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.precision import stream_qdq

DIM = 16


def _graph() -> onnx.ModelProto:
    """q/k from one shared input, an attention-style MatMul of two activations, then an output projection."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(DIM, DIM)).astype(np.float32), f"w{i}") for i in range(3)]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "w1"], ["k"], name="k_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="attention"),
        helper.make_node("Softmax", ["scores"], ["probs"]),
        helper.make_node("MatMul", ["probs", "q"], ["mixed"], name="mix"),
        helper.make_node("MatMul", ["mixed", "w2"], ["y"], name="out_proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", DIM])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _feeds(seed: int, count: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(6, DIM)).astype(np.float32)} for _ in range(count)]


def _run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], feed)[0]


@pytest.fixture
def external_graph(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(_graph(), str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return path


def _ort_static(tmp_path: Path, feeds: list[dict[str, np.ndarray]], kept: list[str]) -> Path:
    """ORT's quantize_static restricted to stream_qdq's form: weight MatMuls, Q/DQ on inputs only."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src, dst = tmp_path / "inline.onnx", tmp_path / "ort_int8.onnx"
    onnx.save(_graph(), str(src))
    reader = iter(feeds)
    quantize_static(
        str(src),
        str(dst),
        type("Reader", (), {"get_next": lambda self: next(reader, None)})(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=["attention", "mix", *kept],
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "OpTypesToExcludeOutputQuantization": ["MatMul"],
        },
    )
    return dst


@pytest.mark.parametrize("seed", [1, 2])
def test_streamed_qdq_computes_what_onnx_runtimes_static_quantizer_computes(tmp_path, external_graph, seed):
    calibration, ours = _feeds(0), tmp_path / "int8.onnx"
    kept = stream_qdq(external_graph, ours, calibration, alpha=None)
    reference = _ort_static(tmp_path, calibration, kept)
    feed = _feeds(seed, count=1)[0]
    np.testing.assert_allclose(_run(ours, feed), _run(reference, feed), rtol=1e-5, atol=1e-5)


def test_streamed_qdq_differs_from_float_by_int8_rounding_only(tmp_path, external_graph):
    """The form alone: smoothing needs more calibration rows per channel than these 24 (tests/test_int8_ranges.py)."""
    ours = tmp_path / "int8.onnx"
    stream_qdq(external_graph, ours, _feeds(0), alpha=None)
    feed = _feeds(3, count=1)[0]
    quantized, exact = _run(ours, feed), _run(external_graph, feed)
    assert not np.array_equal(quantized, exact)
    assert np.abs(quantized - exact).max() < 0.05 * np.abs(exact).max()


def test_streamed_qdq_quantizes_a_shared_activation_once_and_leaves_attention_in_float(tmp_path, external_graph):
    assert stream_qdq(external_graph, tmp_path / "int8.onnx", _feeds(0)) == []
    graph = onnx.load(str(tmp_path / "int8.onnx"), load_external_data=False)
    quantized_inputs = [n.input[0] for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    assert sorted(quantized_inputs) == ["mixed_smoothed", "x_smoothed"]
    matmuls = {n.name: n.input for n in graph.graph.node if n.op_type == "MatMul"}
    assert matmuls["attention"] == ["q", "kt"] and matmuls["mix"] == ["probs", "q"]


def test_streamed_qdq_stores_per_column_int8_weights_in_its_own_data_file(tmp_path, external_graph):
    dst = tmp_path / "int8.onnx"
    stream_qdq(external_graph, dst, _feeds(0))
    graph = onnx.load(str(dst), load_external_data=False)
    weights = [t for t in graph.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 2]
    assert len(weights) == 3
    assert {e.value for t in weights for e in t.external_data if e.key == "location"} == {"int8.onnx.data"}
    axes = [a.i for n in graph.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes == [1, 1, 1]
    onnx.checker.check_model(str(dst))


def test_streamed_qdq_leaves_no_calibration_graph_behind(tmp_path, external_graph):
    stream_qdq(external_graph, tmp_path / "int8.onnx", _feeds(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "int8.onnx",
        "int8.onnx.data",
        "model.onnx",
        "model.onnx.data",
    ]

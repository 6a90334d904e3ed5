"""int8 Q/DQ keeps in float the weight MatMuls whose own quantisation error is largest, within a weight budget."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.int8_sensitivity import MatMulError, keep_in_float, matmul_errors, sample_activations
from export.precision import _calibrated, stream_qdq

DIM = 32
OUTLIER = 1000.0  # one channel of the second layer's activation this many times the others
LAYERS = 12


def _graph(outlier: bool) -> onnx.ModelProto:
    """A chain of LAYERS projections; with `outlier`, the first writes one huge channel that the second reads.

    Each weight is 1/LAYERS of all, so keeping one in float fits the 10% budget.
    """
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(DIM, DIM)).astype(np.float32) / np.sqrt(DIM) for _ in range(LAYERS)]
    if outlier:
        weights[0][:, 3] *= OUTLIER
        weights[1][3, :] /= OUTLIER
    names = ["first", "second", *(f"layer{i}" for i in range(2, LAYERS))]
    values = ["x", *(f"h{i}" for i in range(LAYERS - 1)), "y"]
    nodes = [helper.make_node("MatMul", [values[i], f"w{i}"], [values[i + 1]], name=names[i]) for i in range(LAYERS)]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", DIM])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _saved(tmp_path: Path, outlier: bool) -> Path:
    path = tmp_path / "chain.onnx"
    onnx.save(_graph(outlier), str(path), save_as_external_data=True, location="chain.onnx.data", size_threshold=0)
    return path


def _feeds(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(16, DIM)).astype(np.float32)} for _ in range(2)]


def _errors(path: Path) -> list[MatMulError]:
    """Each MatMul's int8 error on the first calibration feed, activations at their calibrated maximum."""
    scales = _calibrated(path, _feeds(), alpha=None).scales
    return matmul_errors(path, sample_activations(path, _feeds()[:1]), scales)


def test_the_matmul_reading_an_outlier_channel_has_the_largest_int8_error(tmp_path):
    path = _saved(tmp_path, outlier=True)
    errors = {e.node: e.error for e in _errors(path)}
    assert max(errors, key=errors.get) == "second"
    assert errors["second"] > 10 * max(error for node, error in errors.items() if node != "second")


def test_int8_without_smoothing_keeps_the_outlier_matmul_in_float_and_quantises_the_rest(tmp_path):
    path, dst = _saved(tmp_path, outlier=True), tmp_path / "int8.onnx"
    assert stream_qdq(path, dst, _feeds(), alpha=None) == ["second"]
    graph = onnx.load(str(dst), load_external_data=False)
    inputs = {n.name: list(n.input) for n in graph.graph.node if n.op_type == "MatMul"}
    assert inputs["second"] == ["h0", "w1"]
    assert inputs["first"] == ["x_dequantized", "w0_dequantized"]


def test_a_graph_without_outliers_spends_the_budget_on_its_largest_error(tmp_path):
    errors = _errors(_saved(tmp_path, outlier=False))
    assert keep_in_float(errors) == [max(errors, key=lambda e: e.error).node]  # one weight of 12 fits in 10%


def test_the_budget_left_goes_to_the_most_error_per_float_weight():
    errors = [
        MatMulError("mlp", 800, 0.020),
        MatMulError("attention", 100, 0.012),
        MatMulError("ordinary", 100, 0.010),
    ]
    assert keep_in_float(errors, budget=0.2) == ["attention", "ordinary"]
    assert keep_in_float(errors, budget=0.2, fill=False) == []  # none is 3 times the median


@pytest.mark.parametrize(("budget", "kept"), [(0.10, ["small"]), (0.60, ["big", "small"])])
def test_the_most_sensitive_matmuls_are_kept_only_within_the_weight_budget(budget, kept):
    errors = [
        MatMulError("big", 500, 0.5),
        MatMulError("small", 100, 0.4),
        *(MatMulError(f"ordinary{i}", 100, 0.01) for i in range(4)),
    ]
    assert keep_in_float(errors, budget=budget) == kept

"""SmoothQuant moves an activation's outlier channels into the weights, so int8's per-tensor grid fits the rest."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.int8_ranges import smoothing_factors
from export.precision import stream_qdq

DIM = 64
ROWS = 512  # tokens per item: enough rows per channel that the calibrated channel maxima are stable


def _projection(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    weight = (rng.normal(size=(DIM, DIM)) / np.sqrt(DIM)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="down_proj")],
        "projection",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", DIM])],
        [numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "projection.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path), save_as_external_data=True, location="projection.onnx.data", size_threshold=0)
    return path


def _relative_error(graph: Path, exact: Path, feed: dict[str, np.ndarray]) -> float:
    out, ref = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["y"], feed)[0] for p in (graph, exact)
    )
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def _outlier_channels(seed: int) -> dict[str, np.ndarray]:
    """Gaussian activations whose channel 5 is 50 times the others, as LLM activations have a few channels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, ROWS, DIM)).astype(np.float32)
    x[..., 5] *= 50
    return {"x": x}


def test_smoothing_cuts_the_int8_error_of_a_projection_reading_an_outlier_channel_fivefold(tmp_path):
    src = _projection(tmp_path)
    calibration = [_outlier_channels(seed) for seed in range(4)]
    held_out = _outlier_channels(10)
    smoothed, plain = tmp_path / "smoothed.onnx", tmp_path / "plain.onnx"
    stream_qdq(src, smoothed, calibration)
    stream_qdq(src, plain, calibration, alpha=None)
    assert _relative_error(smoothed, src, held_out) < _relative_error(plain, src, held_out) / 5


def test_smoothing_factors_balance_activation_and_weight_peaks_and_leave_dead_channels_alone():
    peaks = np.array([4.0, 1.0, 0.0], np.float32)
    weight = np.array([[1.0, -1.0], [4.0, 0.5], [2.0, 2.0]], np.float32)
    np.testing.assert_allclose(smoothing_factors(peaks, [weight], alpha=0.5), [2.0, 0.5, 1.0])

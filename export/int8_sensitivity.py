"""Which weight MatMuls int8 Q/DQ keeps in float: the ones whose own quantisation error is largest.

Each weight-bearing MatMul x @ W is measured on its own, on sampled calibration items (never the gate's): the
relative error `|x W - dq(q(x)) dq(q(W))| / |x W|`, averaged over the items, with the activation smoothing and
scale the quantizer will use (`export.int8_ranges`, per tensor) and W symmetric per output column. A MatMul whose
activation has a few outlier channels loses the rest of its channels to the coarse per-tensor grid and
shows a large error here; those are what a mixed int8 graph keeps in float.

`keep_in_float` spends a budget of float weights (10% of all quantisable MatMul weights by default): first on
the most sensitive MatMuls, largest error first, whose error is at least `SENSITIVE_RATIO` times the median
MatMul's; then on those that remove the most error per float weight. Even with no outlier left (SmoothQuant
evens the errors out: at 2B no MatMul reached 3 times the median), int8's rounding adds up over a deep model,
and a float weight buys most where weights are few: at 2B the budget goes to the attention projections. The
chosen names go to the manifest (`kept_in_float`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .graph_weights import float_weight, int8_columns, weight_matmuls

# A MatMul is sensitive when its error is at least this many times the median's: the error of an
# ordinary activation is set by int8's grid and is alike across layers; outlier channels multiply it.
SENSITIVE_RATIO = 3.0
FLOAT_BUDGET = 0.10  # at most this share of the quantisable MatMul weights stays in float


@dataclass(frozen=True)
class MatMulError:
    node: str  # the MatMul's name in the graph
    weights: int  # elements of its weight
    error: float  # relative Frobenius error of its output under int8


def weight_matmul_inputs(model: onnx.ModelProto) -> dict[str, tuple[str, onnx.TensorProto]]:
    """MatMul name -> (its activation input, its 2-D weight), for the MatMuls int8 quantises."""
    targets = weight_matmuls(model.graph)
    return {n.name: (n.input[0], targets[n.output[0]]) for n in model.graph.node if n.output and n.output[0] in targets}


def matmul_errors(
    src: Path,
    activations: Sequence[Mapping[str, np.ndarray]],
    scales: Mapping[str, np.float32],
    smoothing: Mapping[str, np.ndarray] | None = None,
) -> list[MatMulError]:
    """Every weight MatMul's int8 error on sampled `activations` (`sample_activations`), activation scales from
    `scales` (activation name -> scale): the mean over the samples of each one's relative error. An activation
    with a SmoothQuant divisor in `smoothing` is sampled already divided by it; its weights' rows are multiplied
    by it here, as the quantizer does."""
    smoothing = smoothing or {}
    model = onnx.load(str(src), load_external_data=False)
    errors = []
    for name, (x, weight) in weight_matmul_inputs(model).items():
        array = float_weight(weight, src.parent)
        if x in smoothing:
            array = array * smoothing[x][:, None]
        error = _error([sample[x] for sample in activations], array, scales[x])
        errors.append(MatMulError(name, int(np.prod(weight.dims)), error))
    return errors


def sample_activations(src: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The input of every weight MatMul on each of `feeds`, as 2-D [rows, channels] arrays, one mapping a feed.

    The graph gains those inputs as outputs and runs in one ONNX Runtime session, written beside `src` under a
    hidden name so its external-data references still resolve.
    """
    import onnxruntime as ort

    model = onnx.load(str(src), load_external_data=False)
    names = sorted({x for x, _ in weight_matmul_inputs(model).values()})
    outputs = [n for n in names if n not in {o.name for o in model.graph.output}]
    model.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in outputs)
    probe = src.with_name(f".{src.stem}-{os.getpid()}-sensitivity.onnx")
    try:
        onnx.save(model, str(probe))
        del model
        session = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
        samples = []
        for feed in feeds:
            values = session.run(names, dict(feed))
            samples.append({n: v.reshape(-1, v.shape[-1]) for n, v in zip(names, values, strict=True)})
    finally:
        probe.unlink(missing_ok=True)
    return samples


def _error(samples: Sequence[np.ndarray], weight: np.ndarray, scale: np.float32) -> float:
    """Mean over `samples` of the relative Frobenius error of x @ weight with x and weight in int8."""
    exact_weight = np.asarray(weight, np.float32)
    quantized, columns = int8_columns(exact_weight)
    dequantized = quantized.astype(np.float32) * columns
    errors = []
    for x in samples:
        exact = x @ exact_weight
        approx = (np.clip(np.rint(x / scale), -127, 127) * scale) @ dequantized
        errors.append(np.linalg.norm(exact - approx) / max(np.linalg.norm(exact), 1e-30))
    return float(np.mean(errors))


def keep_in_float(
    errors: list[MatMulError], ratio: float = SENSITIVE_RATIO, budget: float = FLOAT_BUDGET, fill: bool = True
) -> list[str]:
    """The MatMuls to leave in float, within `budget` of the weights: first the sensitive ones (error at least
    `ratio` times the median), worst first; then, with `fill`, in the budget left, those that remove the most int8
    error per float weight (error / weights)."""
    if not errors:
        return []
    median = float(np.median([e.error for e in errors]))
    sensitive = sorted((e for e in errors if e.error >= ratio * median), key=lambda e: e.error, reverse=True)
    rest = sorted((e for e in errors if e.error < ratio * median), key=lambda e: e.error / e.weights, reverse=True)
    rest = rest if fill else []
    allowed = budget * sum(e.weights for e in errors)
    kept, used = [], 0
    for e in sensitive + rest:
        if used + e.weights <= allowed:
            kept.append(e.node)
            used += e.weights
    return kept

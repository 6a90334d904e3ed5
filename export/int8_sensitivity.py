"""Which weight MatMuls int8 Q/DQ keeps in float: the ones whose own quantisation error is largest.

Each weight-bearing MatMul x @ W is measured on its own, on calibration inputs (never the gate's): the
relative error `|x W - dq(q(x)) dq(q(W))| / |x W|` with the activation scale the quantizer will use
(calibrated absolute maximum / 127, per tensor) and W symmetric per output column. A MatMul whose
activation has a few outlier channels loses the rest of its channels to the coarse per-tensor grid and
shows a large error here; those are what a mixed int8 graph keeps in float.

`keep_in_float` takes the most sensitive MatMuls, largest error first, while their error is at least
`SENSITIVE_RATIO` times the median MatMul's and their weights stay within `budget` (10% by default) of
all quantisable MatMul weights. The chosen names go to the manifest (`kept_in_float`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph_weights import external_array, int8_columns, weight_matmuls

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


def matmul_errors(src: Path, feed: Mapping[str, np.ndarray], scales: Mapping[str, np.float32]) -> list[MatMulError]:
    """Every weight MatMul's int8 error on `feed`, activation scales from `scales` (activation name -> scale)."""
    model = onnx.load(str(src), load_external_data=False)
    matmuls = weight_matmul_inputs(model)
    activations = _activations(src, model, sorted({x for x, _ in matmuls.values()}), feed)
    errors = []
    for name, (x, weight) in matmuls.items():
        array = external_array(weight, src.parent) if weight.data_location else numpy_helper.to_array(weight)
        errors.append(MatMulError(name, int(np.prod(weight.dims)), _error(activations[x], array, scales[x])))
    return errors


def _activations(
    src: Path, model: onnx.ModelProto, names: list[str], feed: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The named intermediate tensors on one feed, as 2-D [rows, features] arrays."""
    import onnxruntime as ort

    outputs = [n for n in names if n not in {o.name for o in model.graph.output}]
    model.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in outputs)
    probe = src.with_name(f".{src.stem}-{os.getpid()}-sensitivity.onnx")
    try:
        onnx.save(model, str(probe))
        session = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
        values = session.run(names, dict(feed))
    finally:
        probe.unlink(missing_ok=True)
    return {n: v.reshape(-1, v.shape[-1]) for n, v in zip(names, values, strict=True)}


def _error(x: np.ndarray, weight: np.ndarray, scale: np.float32) -> float:
    exact = x @ np.asarray(weight, np.float32)
    quantized, columns = int8_columns(np.asarray(weight, np.float32))
    x_q = np.clip(np.rint(x / scale), -127, 127) * scale
    approx = x_q @ (quantized.astype(np.float32) * columns)
    return float(np.linalg.norm(exact - approx) / max(np.linalg.norm(exact), 1e-30))


def keep_in_float(errors: list[MatMulError], ratio: float = SENSITIVE_RATIO, budget: float = FLOAT_BUDGET) -> list[str]:
    """The MatMuls to leave in float: sensitive ones, worst first, within `budget` of the weights."""
    if not errors:
        return []
    median = float(np.median([e.error for e in errors]))
    allowed = budget * sum(e.weights for e in errors)
    kept, used = [], 0
    for e in sorted(errors, key=lambda e: e.error, reverse=True):
        if e.error < ratio * median:
            break
        if used + e.weights <= allowed:
            kept.append(e.node)
            used += e.weights
    return kept

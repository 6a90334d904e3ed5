"""Which weight MatMuls int4 keeps in float: those whose int4 weights change their output most, within a budget.

int4 is weight-only: activations stay in float, so a MatMul x @ W loses `x @ (W - dq(q(W)))` and nothing else.
Each weight MatMul's relative error `|x W - x dq(q(W))| / |x W|` is measured on sampled calibration items, with
the blocks `quantize_int4` will use. The error of a weight is larger where its blocks hold an outlier (the block's
scale is set by it, so the rest round coarsely) and where the activation has outlier channels (their rows' errors
are multiplied by them): the two things trained models have and random-initialised ones lack. The budget is spent
as int8's is (`export.int8_sensitivity.keep_in_float`), on a share of the quantisable MatMul weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from .graph_weights import float_weight
from .int8_sensitivity import MatMulError, keep_in_float, sample_activations, weight_matmul_inputs
from .precision import int4_dequantized


def int4_errors(src: Path, activations: Sequence[Mapping[str, np.ndarray]], block_size: int) -> list[MatMulError]:
    """Every weight MatMul's int4 error on sampled `activations` (`sample_activations`): the mean over the samples
    of each one's relative error. A weight whose rows are not whole blocks stays float anyway and is left out."""
    model = onnx.load(str(src), load_external_data=False)
    errors = []
    for name, (x, weight) in weight_matmul_inputs(model).items():
        if weight.dims[0] % block_size:
            continue
        exact = np.asarray(float_weight(weight, src.parent), np.float32)
        lost = exact - int4_dequantized(exact, block_size)
        relative = [np.linalg.norm(s[x] @ lost) / max(np.linalg.norm(s[x] @ exact), 1e-30) for s in activations]
        errors.append(MatMulError(name, int(np.prod(weight.dims)), float(np.mean(relative))))
    return errors


def int4_kept_in_float(
    src: Path, feeds: Sequence[Mapping[str, np.ndarray]], block_size: int, budget: float
) -> list[str]:
    """The MatMuls of `src` that int4 leaves in float: within `budget` of the weights, by their error on `feeds`."""
    if budget <= 0:
        return []
    return keep_in_float(int4_errors(src, sample_activations(src, feeds), block_size), budget=budget)

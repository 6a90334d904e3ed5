"""Lint an ONNX graph for TensorRT before anyone spends a build on it.

Checks: default-domain ops only; no control flow (Loop/If/Scan); no
data-dependent shape ops (NonZero, Unique, Compress); every op in the
TensorRT 10.x ONNX parser's support matrix (onnx-tensorrt docs/operators.md);
opset within the target's range; Q/DQ zero points all zero (TensorRT's
explicit-quantization rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .targets import Target

CONTROL_FLOW = {"Loop", "If", "Scan"}
DATA_DEPENDENT = {"NonZero", "Unique", "Compress"}
# Ops the TensorRT 10.x ONNX parser supports that can appear at opset <= 20.
TRT_SUPPORTED_OPS = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization BlackmanWindow Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND
Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool
Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus
Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
Reshape Resize ReverseSequence RNN RoiAlign Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape
Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split()
)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _nonzero_zero_points(model: onnx.ModelProto) -> list[str]:
    initializers = {t.name: t for t in model.graph.initializer}
    bad = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero_point = initializers.get(node.input[2])
            if zero_point is not None and np.any(numpy_helper.to_array(zero_point) != 0):
                bad.append(node.name or node.output[0])
    return bad


def lint_model(model: onnx.ModelProto, target: Target) -> list[str]:
    """Problems that would stop or mislead a TensorRT build on `target` (empty when clean)."""
    problems = []
    opset_problem = target.check_opset(_default_opset(model))
    if opset_problem:
        problems.append(opset_problem)
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    for domain, op in sorted(ops):
        if domain not in ("", "ai.onnx"):
            problems.append(f"{op} is in custom domain {domain!r}: TensorRT would need a plugin")
        elif op in CONTROL_FLOW:
            problems.append(f"{op} is control flow: export a graph without data-dependent branches or loops")
        elif op in DATA_DEPENDENT:
            problems.append(f"{op} has a data-dependent output shape")
        elif op not in TRT_SUPPORTED_OPS:
            problems.append(f"{op} is not supported by the TensorRT {target.tensorrt} ONNX parser")
    bad_zero_points = _nonzero_zero_points(model)
    if bad_zero_points:
        problems.append(f"Q/DQ with non-zero zero points ({', '.join(bad_zero_points[:3])}): TensorRT needs symmetric")
    return problems


def lint_file(path: str | Path, target: Target) -> list[str]:
    return lint_model(onnx.load(str(path), load_external_data=False), target)

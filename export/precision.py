"""Precision variants of the encoder graphs.

- fp16: the model itself is cast to half and exported; its RMSNorm, LayerNorm,
  softmax, L2 normalisation and fused scoring already run in fp32 by
  construction (the same code path as bf16 training), so the graph is mixed
  precision without any graph surgery.
- int8: symmetric Q/DQ (zero point 0, per-channel int8 weights, int8
  activations on MatMul/Conv/Gemm inputs) calibrated with ONNX Runtime on real
  inputs: TensorRT's explicit-quantization form.
- int8-dynamic: ONNX Runtime dynamic quantization, for CPU deployments only
  (TensorRT cannot parse its MatMulInteger).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx

from agff_deploy.model import AGFFEmbedder

QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]


def half_model(model: AGFFEmbedder) -> AGFFEmbedder:
    return copy.deepcopy(model).half().eval()


class _FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _preprocessed(src: Path, folder: Path) -> Path:
    """ORT's quantization pre-processing, on a copy without the exporter's `value_info`.

    Stale intermediate shapes from some exporter versions make ONNX shape
    inference refuse the graph ("inferred shape and existing shape differ");
    without them it infers every shape afresh. The copy goes to a file because
    ORT's in-memory ModelProto route cannot read the exporter's external tensors.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    bare = folder / "bare.onnx"
    onnx.save(model, str(bare))
    out = folder / "pre.onnx"
    quant_pre_process(str(bare), str(out), skip_symbolic_shape=True)
    return out


def activation_matmuls(path: Path) -> list[str]:
    """MatMuls of two activations (attention's QK^T and PV): left in float, as ModelOpt's int8 recipe does."""
    model = onnx.load(str(path), load_external_data=False)
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not constants & set(n.input)]


def quantize_qdq(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """Symmetric int8 Q/DQ on weight-bearing MatMul/Gemm/Conv, calibrated (min/max) on `feeds`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        prepared = _preprocessed(src, Path(tmp))
        quantize_static(
            str(prepared),
            str(dst),
            _FeedReader(feeds),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_exclude=activation_matmuls(prepared),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    return dst


def quantize_dynamic_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        quantize_dynamic(
            str(_preprocessed(src, Path(tmp))),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    return dst

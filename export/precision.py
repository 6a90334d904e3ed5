"""Precision variants of the encoder graphs.

- fp16: the model itself is cast to half and exported (export.bundle); its RMSNorm, LayerNorm,
  softmax, L2 normalisation and fused scoring already run in fp32 by
  construction (the same code path as bf16 training), so the graph is mixed
  precision without any graph surgery.
- int8: symmetric Q/DQ (zero point 0, per-channel int8 weights, int8
  activations) on the inputs of MatMul/Conv/Gemm only, as in ModelOpt's
  recipe, calibrated with ONNX Runtime on real inputs: TensorRT's
  explicit-quantization form. A graph with external weights (a large model)
  is calibrated and rewritten in a streaming pass instead, with SmoothQuant
  factors on each MatMul's activation.
- int8-dynamic: ONNX Runtime dynamic quantization, for CPU deployments only
  (TensorRT cannot parse its MatMulInteger).
- int4: weight-only, block-wise symmetric int4 of the MatMul weights behind an
  opset-21 DequantizeLinear (TensorRT 10's INT4 weight-only form); activations
  stay in float. Rewritten in a streaming pass, one weight in memory at a time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph_weights import external_array, float_weight, int8_columns, weight_matmuls
from .int8_ranges import SMOOTHING_ALPHA, smoothing_factors
from .int8_sensitivity import keep_in_float, matmul_errors, sample_activations, weight_matmul_inputs

QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]
# Calibration items whose activations measure each MatMul's int8 error: every weight MatMul's input is held at
# once, which for a 2B vision tower is about 1.2 GB per 448 px image.
SENSITIVITY_ITEMS = 2


class _FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


@contextlib.contextmanager
def _preprocessed(src: Path) -> Iterator[tuple[Path, bool]]:
    """The graph the quantizers read, and whether its weights are external.

    The exporter's `value_info` is dropped first: stale intermediate shapes from
    some exporter versions make ONNX shape inference refuse the graph ("inferred
    shape and existing shape differ"); without them it infers every shape afresh.
    A graph with external weights (a large model) gets ONNX shape inference on
    its path only, which never reads the weights: ORT's pre-processing would
    hold the model three times (Python copy, optimiser session, reload). A small
    graph gets ORT's full pre-processing, optimiser included. The temporary
    graphs sit beside `src` under hidden names, because onnx only follows an
    external-data reference to a real file in the graph's own folder (it refuses
    links), and that is where `src`'s weights are.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src), load_external_data=False)
    external = _has_external(model)
    del model.graph.value_info[:]
    tag = f".{src.stem}-{os.getpid()}"
    bare, prepared = src.with_name(f"{tag}-bare.onnx"), src.with_name(f"{tag}-pre.onnx")
    try:
        onnx.save(model, str(bare))
        del model
        if external:
            onnx.shape_inference.infer_shapes_path(str(bare), str(prepared))
        else:
            quant_pre_process(str(bare), str(prepared), skip_symbolic_shape=True)
        yield prepared, external
    finally:
        bare.unlink(missing_ok=True)
        prepared.unlink(missing_ok=True)


def activation_matmuls(path: Path) -> list[str]:
    """MatMuls of two activations (attention's QK^T and PV): left in float, as ModelOpt's int8 recipe does."""
    model = onnx.load(str(path), load_external_data=False)
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not constants & set(n.input)]


def quantize_qdq(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> list[str]:
    """Symmetric int8 Q/DQ on weight-bearing MatMul/Gemm/Conv, calibrated on `feeds`; the MatMuls whose own int8
    error is largest on sampled items stay in float (`export.int8_sensitivity`). Returns their names.

    Activations get ORT's min/max ranges. A graph held in the protobuf (a small model) is not smoothed (ORT's
    quantizer takes no per-channel divisor) and keeps only its sensitive MatMuls in float, without filling the
    budget: ORT feeds a MatMul it leaves out the dequantised activation when another reader quantises it, so
    keeping it buys back only its weight's error. ORT's static quantizer holds a graph about three times over, so a
    graph with external weights (a large model, which smoothing is for) goes through `stream_qdq` instead.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if _has_external(onnx.load(str(src), load_external_data=False)):
        return stream_qdq(src, dst, feeds)
    with _preprocessed(src) as (prepared, external):
        kept = _calibrated(prepared, feeds, alpha=None, fill=False).kept
        quantize_static(
            str(prepared),
            str(dst),
            _FeedReader(feeds),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_exclude=activation_matmuls(prepared) + kept,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "OpTypesToExcludeOutputQuantization": QUANTIZED_OPS,
            },
            use_external_data_format=external,
        )
    return kept


def _max_scale(peak: float) -> np.float32:
    return np.float32(peak / 127 if peak > 0 else 1.0)


@dataclass(frozen=True)
class Int8Calibration:
    """What int8 Q/DQ writes into a graph besides the weights, from calibration data."""

    scales: dict[str, np.float32]  # activation -> per-tensor int8 scale (of the smoothed activation)
    smoothing: dict[str, np.ndarray]  # activation -> per-channel divisor s: x / s is quantised, weight rows * s
    kept: list[str]  # weight MatMuls left in float


def _calibrated(
    src: Path, feeds: list[dict[str, np.ndarray]], alpha: float | None = SMOOTHING_ALPHA, fill: bool = True
) -> Int8Calibration:
    """Every weight MatMul's activation scale (and SmoothQuant divisor when `alpha`), and the MatMuls to keep
    (`keep_in_float`, filling the float budget when `fill`).

    Scales and smoothing factors come from the per-channel maxima over all `feeds`; each MatMul's error is
    measured on `sample_items(feeds)`, smoothed as the graph will be.
    """
    model = onnx.load(str(src), load_external_data=False)
    matmuls = weight_matmul_inputs(model)
    del model
    readers: dict[str, list[onnx.TensorProto]] = {}
    for x, weight in matmuls.values():
        readers.setdefault(x, []).append(weight)
    peaks = _peaks(src, sorted(readers), feeds)
    samples = sample_activations(src, sample_items(feeds))
    smoothing = {}
    if alpha is not None:
        for x, tensors in readers.items():
            smoothing[x] = smoothing_factors(peaks[x], [float_weight(t, src.parent) for t in tensors], alpha)
            peaks[x] = peaks[x] / smoothing[x]
            for sample in samples:
                sample[x] = sample[x] / smoothing[x]
    scales = {x: _max_scale(float(peak.max())) for x, peak in peaks.items()}
    kept = keep_in_float(matmul_errors(src, samples, scales, smoothing), fill=fill)
    return Int8Calibration(scales, smoothing, kept)


def sample_items(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """`SENSITIVITY_ITEMS` single-item feeds: the first items of the first feed, and the first of the last feed.

    The language encoder's calibration lists its text feeds first and its image feeds last, so its sample holds a
    text item and an image item: the two kinds it serves, whose activations differ.
    """
    first = [{k: v[i : i + 1] for k, v in feeds[0].items()} for i in range(SENSITIVITY_ITEMS)]
    if len(feeds) == 1:
        return first
    return first[: SENSITIVITY_ITEMS - 1] + [{k: v[:1] for k, v in feeds[-1].items()}]


def quantize_dynamic_int8(src: Path, dst: Path) -> Path:
    """ONNX Runtime's dynamic int8 for a graph held in the protobuf; a graph with external weights is streamed.

    ORT's quantizer holds a graph about 3.4 times over (measured: 5.5 GB of RSS for a 1.6 GB
    graph), so the 8.8 GB image encoder of a 2B model cannot be quantised by it in 24 GB.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if _has_external(onnx.load(str(src), load_external_data=False)):
        return stream_dynamic_int8(src, dst)
    with _preprocessed(src) as (prepared, _):
        quantize_dynamic(
            str(prepared),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    return dst


def _has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


class _ExternalWriter:
    """Appends tensors to one external-data file, page-aligned so ONNX Runtime can memory-map them."""

    def __init__(self, data_path: Path) -> None:
        self.location = data_path.name
        self.file = data_path.open("wb")

    def add(self, tensor: onnx.TensorProto, array: np.ndarray) -> onnx.TensorProto:
        offset = -self.file.tell() % 4096
        self.file.write(b"\0" * offset)
        start = self.file.tell()
        self.file.write(np.ascontiguousarray(array).tobytes())
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(start)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        return tensor


# How one weight-bearing MatMul is rewritten: (node, weight name, fp32 weight, writer) -> (new tensors, new nodes).
MatMulRewrite = Callable[
    [onnx.NodeProto, str, np.ndarray, "_ExternalWriter"], tuple[list[onnx.TensorProto], list[onnx.NodeProto]]
]


def stream_dynamic_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 of every MatMul by a 2-D weight, one weight in memory at a time.

    The graph ORT's dynamic quantizer writes: the activation goes through
    DynamicQuantizeLinear (uint8, per tensor), each weight becomes symmetric
    int8 per output column, MatMulInteger accumulates in int32, and a Cast and a
    Mul by both scales return to float (ORT fuses the chain into one kernel).
    Every other tensor is copied as it is. The output is `dst` plus `dst.data`.
    """
    return _rewriteweight_matmuls(src, dst, _integer_matmul)


def stream_qdq(
    src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], alpha: float | None = SMOOTHING_ALPHA
) -> list[str]:
    """Static int8 Q/DQ of every MatMul by a 2-D weight, for graphs too large for ORT's quantizer; returns the
    MatMuls left in float (`export.int8_sensitivity`).

    The form `quantize_qdq` writes for TensorRT: with `alpha`, the activation is
    first divided per channel by its SmoothQuant factors (a Mul by a constant,
    `{x}_smoothing`; `export.int8_ranges`) and each weight's rows multiplied by
    them; then it goes through a QuantizeLinear/DequantizeLinear pair with a
    per-tensor scale (its calibrated absolute maximum / 127, as ORT's min/max
    calibration), the weight is stored as symmetric int8 per output
    column behind a DequantizeLinear. A MatMul kept in float reads the
    activation and its weight as they were. Q/DQ sit on the MatMul's inputs only (as in
    ModelOpt's recipe; TensorRT fuses the output side itself). Calibration runs
    the graph once with a running absolute maximum per activation as extra outputs, so
    the weights are held once (by ONNX Runtime); the rewrite then holds one weight
    at a time. MatMuls between two activations (attention), Conv and Gemm stay in
    float. The output is `dst` plus `dst.data`.
    """
    calibration = _calibrated(src, feeds, alpha)
    scales, smoothing, kept = calibration.scales, calibration.smoothing, set(calibration.kept)
    quantized: set[str] = set()

    def qdq_matmul(node, name, weight, writer):
        if node.name in kept:
            float_weight = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=weight.shape)
            return [writer.add(float_weight, weight)], [node]
        x = node.input[0]
        smoothed = x
        if x in smoothing:
            weight = weight * smoothing[x][:, None]
            smoothed = f"{x}_smoothed"
        tensors, nodes = _weight_dq(name, weight, writer)
        if x not in quantized:
            quantized.add(x)
            tensors += [
                numpy_helper.from_array(scales[x], f"{x}_scale"),
                numpy_helper.from_array(np.int8(0), f"{x}_zero_point"),
            ]
            if x in smoothing:
                tensors.append(numpy_helper.from_array(1 / smoothing[x], f"{x}_smoothing"))
                nodes.append(helper.make_node("Mul", [x, f"{x}_smoothing"], [smoothed], name=f"{x}_smoothing"))
            nodes += [
                helper.make_node("QuantizeLinear", [smoothed, f"{x}_scale", f"{x}_zero_point"], [f"{x}_quantized"]),
                helper.make_node(
                    "DequantizeLinear", [f"{x}_quantized", f"{x}_scale", f"{x}_zero_point"], [f"{x}_dequantized"]
                ),
            ]
        nodes.append(
            helper.make_node("MatMul", [f"{x}_dequantized", f"{name}_dequantized"], list(node.output), name=node.name)
        )
        return tensors, nodes

    _rewriteweight_matmuls(src, dst, qdq_matmul)
    return sorted(kept)


def _peaks(src: Path, activations: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each activation's absolute maximum over `feeds` per channel (its last axis), from one ONNX Runtime session.

    The graph gains a ReduceMax(Abs(x)) output per activation, placed right
    after the node that makes x and run in that order (ONNX Runtime's
    priority-based order): statistics taken at the end of the run keep every
    activation alive until then (measured on a chain of 40 activations: 1485 MB
    of RSS against 177 MB; a 2B image encoder was killed at 24 GB).
    The graph is written beside `src` under a hidden name so its external-data
    references still resolve, and removed afterwards.
    """
    import onnxruntime as ort

    model = onnx.load(str(src), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    wanted, order = set(activations), []
    inputs = {i.name for i in model.graph.input}
    nodes = [n for x in activations if x in inputs for n in _peak_nodes(x, order, opset)]
    for node in model.graph.node:
        nodes.append(node)
        nodes += [n for x in node.output if x in wanted for n in _peak_nodes(x, order, opset)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    outputs = [f"{x}_calibration_peak" for x in order]
    model.graph.output.extend(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, [None]) for out in outputs)
    augmented = src.with_name(f".{src.stem}-{os.getpid()}-calibration.onnx")
    peaks: dict[str, np.ndarray] = {}
    try:
        onnx.save(model, str(augmented))
        del model
        options = ort.SessionOptions()
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
        for feed in feeds:
            for x, value in zip(order, session.run(outputs, feed), strict=True):
                peaks[x] = np.maximum(peaks[x], value) if x in peaks else value
    finally:
        augmented.unlink(missing_ok=True)
    return peaks


def _peak_nodes(x: str, order: list[str], opset: int) -> list[onnx.NodeProto]:
    """Abs, Flatten to [rows, channels], ReduceMax over the rows (axes an input from opset 18, an attribute before)."""
    order.append(x)
    flat = [
        helper.make_node("Abs", [x], [f"{x}_calibration_abs"]),
        helper.make_node("Flatten", [f"{x}_calibration_abs"], [f"{x}_calibration_rows"], axis=-1),
    ]
    if opset >= 18:
        axes = helper.make_node("Constant", [], [f"{x}_calibration_axes"], value_ints=[0])
        peak = helper.make_node(
            "ReduceMax", [f"{x}_calibration_rows", f"{x}_calibration_axes"], [f"{x}_calibration_peak"], keepdims=0
        )
        return [*flat, axes, peak]
    return [
        *flat,
        helper.make_node("ReduceMax", [f"{x}_calibration_rows"], [f"{x}_calibration_peak"], axes=[0], keepdims=0),
    ]


def _weight_dq(
    name: str, weight: np.ndarray, writer: _ExternalWriter
) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """A weight as symmetric int8 per output column (axis 1) behind a DequantizeLinear."""
    tensors = _int8_weight(name, weight, writer)
    dq = helper.make_node(
        "DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"], [f"{name}_dequantized"], axis=1
    )
    return tensors, [dq]


def _int8_weight(name: str, weight: np.ndarray, writer: _ExternalWriter) -> list[onnx.TensorProto]:
    """`{name}_int8` (written to the external file), `{name}_scale` and `{name}_zero_point`, per output column."""
    quantized, scale = int8_columns(weight)
    int8 = onnx.TensorProto(name=f"{name}_int8", data_type=onnx.TensorProto.INT8, dims=quantized.shape)
    return [
        writer.add(int8, quantized),
        numpy_helper.from_array(scale, f"{name}_scale"),
        numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero_point"),
    ]


def _rewriteweight_matmuls(src: Path, dst: Path, rewrite: MatMulRewrite) -> Path:
    """Replace every weight-bearing MatMul of `src` by `rewrite`'s nodes, one weight in memory at a time; the
    embedding tables go to fp16 (`_half_tables`)."""
    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    targets = weight_matmuls(graph)
    weights = {t.name: t for t in graph.initializer}
    writer = _ExternalWriter(dst.with_name(dst.name + ".data"))
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    try:
        for node in graph.node:
            weight = targets.get(node.output[0]) if node.output else None
            if weight is None:
                nodes.append(node)
                continue
            tensors, matmul = rewrite(node, weight.name, float_weight(weight, src.parent), writer)
            nodes += matmul
            added += tensors
            del weights[weight.name]
        kept = [t for t in graph.initializer if t.name in weights]
        tables = _half_tables(nodes, {t.name: t for t in kept})
        for tensor in kept:
            external = tensor.data_location == onnx.TensorProto.EXTERNAL
            if tensor.name in tables:
                array = external_array(tensor, src.parent) if external else numpy_helper.to_array(tensor)
                tensor.data_type = onnx.TensorProto.FLOAT16
                tensor.ClearField("float_data")
                writer.add(tensor, array.astype(np.float16))
            elif external:
                writer.add(tensor, external_array(tensor, src.parent))
    finally:
        writer.file.close()
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


def _half_tables(nodes: list[onnx.NodeProto], initializers: dict[str, onnx.TensorProto]) -> set[str]:
    """The fp32 embedding tables that `nodes` Gather from (the token table; Qwen3-VL's position table), each made
    fp16 by the caller, its Gathers followed by a Cast back to fp32 (rewritten in `nodes`). Returns their names.

    A quantised graph keeps its tables in float: no MatMul reads them. In fp32 the token table of Qwen3-VL-2B
    (151,936 x 2,048, 1.16 GiB) is a third of its int8 weights; what it holds goes to the fp32 stream one row at a
    time, where fp16's rounding (2^-11 relative) is far below what int8 or int4 already change.
    """
    tables = {
        node.input[0]
        for node in nodes
        if node.op_type == "Gather"
        and node.input[0] in initializers
        and initializers[node.input[0]].data_type == onnx.TensorProto.FLOAT
        and len(initializers[node.input[0]].dims) == 2
    }
    rewritten = []
    for node in nodes:
        rewritten.append(node)
        if node.op_type == "Gather" and node.input[0] in tables:
            output = node.output[0]
            node.output[0] = f"{output}_fp16"
            to_fp32 = onnx.TensorProto.FLOAT
            rewritten.append(helper.make_node("Cast", [node.output[0]], [output], to=to_fp32, name=f"{output}_cast"))
    nodes[:] = rewritten
    return tables


def _integer_matmul(
    node: onnx.NodeProto, name: str, weight: np.ndarray, writer: _ExternalWriter
) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """The initializers and nodes that replace `node` (x @ weight) by its dynamic int8 form."""
    tensors = _int8_weight(name, weight, writer)
    out = node.output[0]
    x_uint8, x_scale, x_zero = (f"{out}_x_{part}" for part in ("uint8", "scale", "zero_point"))
    nodes = [
        helper.make_node("DynamicQuantizeLinear", [node.input[0]], [x_uint8, x_scale, x_zero]),
        helper.make_node("MatMulInteger", [x_uint8, f"{name}_int8", x_zero, f"{name}_zero_point"], [f"{out}_int32"]),
        helper.make_node("Cast", [f"{out}_int32"], [f"{out}_float"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", [x_scale, f"{name}_scale"], [f"{out}_scale"]),
        helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out]),
    ]
    return tensors, nodes


# int4 weight-only: every `block_size` rows (the K axis) of a [K, N] weight share one scale per column.
INT4_BLOCK_SIZES = (32, 64, 128)  # TensorRT 10 takes blocks of 64 and 128; 32 is for ONNX Runtime only
INT4_OPSET = 21  # INT4 tensors and DequantizeLinear's block_size exist from opset 21 (IR version 10) on
_INT4_IR_VERSION = 10
_INT4_MAX = 7  # symmetric: scale = the block's absolute maximum / 7, so codes span [-7, 7] and -8 is never used
_INT4_CHUNK = 1 << 22  # weight elements quantised at once: bounds the temporaries of a large weight to ~16 MB each
_INT4_SCALE_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}


@dataclass(frozen=True)
class Int4Counts:
    """The MatMuls (and Gemms) of a graph by what they multiply by: what the manifest records of an int4 variant."""

    quantized: int  # a weight behind an int4 DequantizeLinear
    kept: int  # a weight left in float: K not a whole number of blocks, tied, not 2-D, not fp32/fp16, or a Gemm's
    activation: int  # two activations (attention): never quantized


def quantize_int4(src: Path, dst: Path, block_size: int = 128, keep: Collection[str] = ()) -> Path:
    """Weight-only int4 of every MatMul by a 2-D weight: DequantizeLinear(int4, block_size) -> MatMul.

    The form TensorRT 10 parses as INT4 weight-only block quantization (and
    ONNX Runtime runs): each weight [K, N] is stored as ONNX INT4 with one
    positive scale per `block_size` rows of each column (DequantizeLinear
    axis 0, no zero point: symmetric, zero point 0), scale = block absolute
    maximum / 7, codes = round-half-to-even(w / scale). Activations stay in
    float, as do MatMuls of two activations, tied weights and weights whose K
    is not a multiple of `block_size` (a ragged last block is valid ONNX, but
    TensorRT documents whole blocks of 64 or 128 only, and padding K would put
    a Pad on the activation between the DequantizeLinear and its MatMul), and
    the MatMuls named in `keep` (`export.int4_sensitivity`'s float budget).
    The graph goes to opset 21 (ONNX's version converter, on the graph
    without its weights), the first with INT4 and block_size.

    Written here rather than by ONNX Runtime's MatMulNBitsQuantizer in its
    QDQ format, which does write DQ(int4, block) -> MatMul, because (1) its
    symmetric scales carry the sign of each block's largest value (max / -8),
    and TensorRT's parser refuses any scale that is not positive; (2) it loads
    the whole graph with its external weights and keeps every float weight
    until all are quantised, where this pass holds one weight at a time.

    `dst` gets its weights inline when `src` has them inline; a graph with
    external weights gets them in `dst.data` beside `dst`. Returns `dst`.
    """
    if block_size not in INT4_BLOCK_SIZES:
        raise ValueError(f"int4 block size {block_size}: choose one of {INT4_BLOCK_SIZES}")
    originals = onnx.load(str(src), load_external_data=False)
    external = _has_external(originals)
    rewrite = _int4_rewrite({t.name: t for t in originals.graph.initializer}, src.parent, block_size, set(keep))
    with _at_opset(src, INT4_OPSET) as converted:
        _rewriteweight_matmuls(converted, dst, rewrite)
    if not external:
        _inline(dst)
    return dst


def int4_counts(path: Path) -> Int4Counts:
    """How many MatMuls of the graph at `path` read an int4 weight, a float weight, or two activations.

    A Gemm with a constant operand (torch.onnx writes an nn.Linear on a 2-D
    input as one, e.g. the vision merger's MLP) counts as a weight kept in
    float: `quantize_int4` rewrites MatMuls only.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    int4 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT4}
    dequantized = {n.output[0]: n.input[0] in int4 for n in graph.node if n.op_type == "DequantizeLinear"}
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    quantized = kept = activation = 0
    for node in (n for n in graph.node if n.op_type in ("MatMul", "Gemm")):
        if any(dequantized.get(name, False) for name in node.input):
            quantized += 1
        elif any(name in constants or name in dequantized for name in node.input):
            kept += 1
        else:
            activation += 1
    return Int4Counts(quantized, kept, activation)


@contextlib.contextmanager
def _at_opset(src: Path, opset: int) -> Iterator[Path]:
    """`src`'s graph at `opset` or above (and IR version 10), its weights where they were.

    ONNX's version converter is given the graph without its external weights
    (their references pass through untouched), so a large graph is never held;
    it updates the nodes whose operator changed between the two opsets, which
    bumping the opset number alone would not. The result sits beside `src`
    under a hidden name, because that is where the references resolve.
    """
    from onnx import version_converter

    model = onnx.load(str(src), load_external_data=False)
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current < opset:
        model = version_converter.convert_version(model, opset)
    model.ir_version = max(model.ir_version, _INT4_IR_VERSION)
    converted = src.with_name(f".{src.stem}-{os.getpid()}-opset{opset}.onnx")
    try:
        onnx.save(model, str(converted))
        del model
        yield converted
    finally:
        converted.unlink(missing_ok=True)


def _int4_rewrite(
    originals: dict[str, onnx.TensorProto], folder: Path, block_size: int, keep: set[str]
) -> MatMulRewrite:
    """The MatMulRewrite of `quantize_int4`; `originals` are the source's initializers (in `folder`)."""

    def rewrite(node, name, weight, writer):
        original = originals[name]
        dtype = _INT4_SCALE_DTYPES.get(original.data_type)
        if dtype is None or weight.shape[0] % block_size or node.name in keep:
            return _kept_weight(node, original, folder, writer)
        packed, scale = _int4_blocks(weight, block_size, dtype)
        int4 = onnx.TensorProto(name=f"{name}_int4", data_type=onnx.TensorProto.INT4, dims=weight.shape)
        scales = onnx.TensorProto(name=f"{name}_int4_scale", data_type=original.data_type, dims=scale.shape)
        dq = helper.make_node(
            "DequantizeLinear",
            [int4.name, scales.name],
            [f"{name}_dequantized"],
            name=f"{name}_DequantizeLinear",
            axis=0,
            block_size=block_size,
        )
        matmul = helper.make_node("MatMul", [node.input[0], f"{name}_dequantized"], list(node.output), name=node.name)
        return [writer.add(int4, packed), writer.add(scales, scale)], [dq, matmul]

    return rewrite


def _int4_blocks(weight: np.ndarray, block_size: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A [K, N] weight as packed int4 codes (two a byte, row-major) and its [K / block_size, N] scales.

    Quantised a band of whole blocks at a time, so a large weight (which may be
    a memory map of the source's data) never has more than `_INT4_CHUNK`
    elements of temporaries.
    """
    rows, cols = weight.shape
    step = block_size * max(1, _INT4_CHUNK // (block_size * cols))
    packed = np.empty(rows * cols // 2, np.uint8)
    scales = np.empty((rows // block_size, cols), dtype)
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        codes, scales[start // block_size : stop // block_size] = _int4_codes(
            np.asarray(weight[start:stop], np.float32), block_size, dtype
        )
        packed[start * cols // 2 : stop * cols // 2] = _pack_int4(codes)
    return packed, scales


def _int4_codes(band: np.ndarray, block_size: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 codes of whole blocks of rows and their scales (in the weight's float type).

    The codes are taken against the scale as stored (after rounding to fp16
    for an fp16 graph), so dequantising reproduces exactly what was meant. A
    block of zeros (or one whose scale underflows fp16) gets scale 1:
    TensorRT refuses a zero scale.
    """
    blocks = band.reshape(-1, block_size, band.shape[1])
    scale = (np.abs(blocks).max(axis=1) / np.float32(_INT4_MAX)).astype(dtype)
    scale[~(scale > 0)] = 1
    codes = np.rint(blocks / scale.astype(np.float32)[:, None, :])
    return np.clip(codes, -8, 7).astype(np.int8).reshape(-1), scale


def int4_dequantized(weight: np.ndarray, block_size: int) -> np.ndarray:
    """What a float32 [K, N] weight becomes through `quantize_int4` and back: its blocks' codes times their scales."""
    codes, scale = _int4_codes(weight, block_size, np.float32)
    blocks = codes.reshape(-1, block_size, weight.shape[1]).astype(np.float32) * scale[:, None, :]
    return blocks.reshape(weight.shape)


def _pack_int4(codes: np.ndarray) -> np.ndarray:
    """ONNX's INT4 layout: two's-complement nibbles, the even-indexed element in the low half of each byte."""
    nibbles = codes.astype(np.uint8) & np.uint8(0x0F)
    return nibbles[0::2] | (nibbles[1::2] << np.uint8(4))


def _kept_weight(
    node: onnx.NodeProto, original: onnx.TensorProto, folder: Path, writer: _ExternalWriter
) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """A weight that stays float, copied from the source in its own type (not the fp32 copy the rewrite gets)."""
    external = original.data_location == onnx.TensorProto.EXTERNAL
    array = external_array(original, folder) if external else numpy_helper.to_array(original)
    kept = onnx.TensorProto(name=original.name, data_type=original.data_type, dims=original.dims)
    return [writer.add(kept, array)], [node]


def _inline(path: Path) -> None:
    """Move the weights of `path` from `path.data` into the graph: a source with inline weights was small enough."""
    data = path.with_name(path.name + ".data")
    model = onnx.load(str(path))
    onnx.save(model, str(path))
    del model
    data.unlink()

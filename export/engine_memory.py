"""`python -m export.engine_memory BUNDLE`: the device memory a bundle's TensorRT engines need, per precision and board.

Estimated from the graphs themselves, not from a parameter-count formula.
Weights: the initializers' bytes at their stored dtype (an int8 Q/DQ weight
is one byte), sized from their dims so external data is never read.
Activations: the graph inputs fixed at the optimisation profile's MAX shapes
(`export.trt_profiles.profile_shapes`), every tensor's shape inferred from them, and
the peak sum of live tensors over the nodes in their stored order (ONNX
requires it to be topological). A weight's DequantizeLinear output counts
nothing: TensorRT folds it into the kernel that reads the weight (its Q/DQ
fusion), so a float copy of the weight never exists (counted, one dequantised
MLP weight of a 2B model outweighs the activations of a one-item batch).
Workspace: the builder's pool, on top.

This is an upper bound more than a prediction: TensorRT fuses layers (their
intermediate tensors never exist) and reuses memory across layers; a liveness
walk over unfused nodes sees none of that. It leaves out tensors whose shape could not be inferred
(counted as 0 bytes, reported as coverage) and a few MiB of per-engine state.

Why shapes are propagated here, node by node: on our dynamo-exported graphs
onnxruntime's `SymbolicShapeInference` raises a TypeError on all three (it
leaves outputs without a shape, e.g. opset 18's ReduceLogSumExp, whose axes
are an input), and `onnx.shape_inference.infer_shapes(data_prop=True)` leaves
55 of the tiny image encoder's 316 tensors unknown: it carries no values
through Reshape, and the exporter builds each attention Reshape target as
Concat(Shape, Reshape(Shape + 6, [-1]), ...). Here onnx's per-node inference
is given the values of the small integer tensors (that shape arithmetic),
which onnx's reference evaluator computes as the walk reaches them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from agff_deploy.contract import TRT_PRECISIONS
from agff_deploy.errors import AgffError, InputError, print_error
from agff_deploy.manifest import Manifest, read_manifest
from agff_deploy.provenance import provenance

from .targets import ORIN_BOARDS, Target
from .trt_profiles import ENGINE_FILES, Shape, profile_shapes

Batch = tuple[int, int, int]
GiB = 2**30
# Shape arithmetic is a handful of integers; a larger tensor is data, never evaluated.
SHAPE_VALUE_LIMIT = 4096
SHAPE_TYPES = frozenset({TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL})


def gib(n: int) -> str:
    return f"{n / GiB:.3f}"


@dataclass(frozen=True)
class GraphMemory:
    """One graph at one set of input shapes, in bytes; `unknown` of its `tensors` node outputs had no shape."""

    weights: int
    activations: int
    tensors: int
    unknown: int


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers at their stored dtype, from their dims: external data is never read."""
    return sum(math.prod(t.dims) * _itemsize(t.data_type) for t in model.graph.initializer)


def graph_memory(model: onnx.ModelProto, input_shapes: Mapping[str, Shape]) -> GraphMemory:
    """Weights and peak live activation bytes with the graph inputs fixed at `input_shapes`.

    Graph inputs are live from the start and outputs to the end (they are the runner's device buffers); every other
    tensor from the node that writes it until its last reader has run; a dequantised weight never (folded).
    """
    types = _infer_types(model, input_shapes)
    nodes = model.graph.node
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    produced = [name for node in nodes for name in node.output if name]
    sizes = {name: _nbytes(types.get(name)) for name in [*inputs, *produced]}
    folded = [n.output[0] for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in initializers]
    sizes.update(dict.fromkeys(folded, 0))
    last_read = {name: step for step, node in enumerate(nodes) for name in node.input}
    last_read.update({output.name: len(nodes) for output in model.graph.output})
    live = {name: sizes[name] or 0 for name in inputs}
    peak = current = sum(live.values())
    for step, node in enumerate(nodes):
        for name in filter(None, node.output):
            live[name] = sizes[name] or 0
            current += live[name]
        peak = max(peak, current)
        for name in {*node.input, *node.output}:
            if name in live and last_read.get(name, step) <= step:
                current -= live.pop(name)
    unknown = sum(sizes[name] is None for name in produced)
    return GraphMemory(weight_bytes(model), peak, len(produced), unknown)


def _infer_types(model: onnx.ModelProto, input_shapes: Mapping[str, Shape]) -> dict[str, onnx.TypeProto]:
    """Every tensor's type, with concrete dims wherever they follow from `input_shapes`."""
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    types: dict[str, onnx.TypeProto] = {}
    values: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        types[tensor.name] = helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims))
        if math.prod(tensor.dims) <= SHAPE_VALUE_LIMIT and tensor.data_location != TensorProto.EXTERNAL:
            values[tensor.name] = numpy_helper.to_array(tensor)
    for graph_input in model.graph.input:
        if graph_input.name in input_shapes:
            dtype = graph_input.type.tensor_type.elem_type
            types[graph_input.name] = helper.make_tensor_type_proto(dtype, list(input_shapes[graph_input.name]))
        else:
            types.setdefault(graph_input.name, graph_input.type)
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if any(name not in types for name in inputs):
            continue
        shape = _dims(types[inputs[0]]) if node.op_type == "Shape" else None
        if shape is not None:
            attributes = {a.name: a.i for a in node.attribute}
            values[node.output[0]] = np.array(shape[attributes.get("start", 0) : attributes.get("end")], np.int64)
        else:
            try:
                schema = onnx.defs.get_schema(node.op_type, opsets.get(node.domain, 1), node.domain)
                data = {name: numpy_helper.from_array(values[name]) for name in inputs if name in values}
                inferred = onnx.shape_inference.infer_node_outputs(
                    schema, node, {name: types[name] for name in inputs}, data, opset_imports=list(model.opset_import)
                )
            except (onnx.defs.SchemaError, onnx.shape_inference.InferenceError):
                continue
            types.update(inferred)
            if all(name in values for name in inputs) and all(
                t.tensor_type.elem_type in SHAPE_TYPES and _count(t) <= SHAPE_VALUE_LIMIT for t in inferred.values()
            ):
                values.update(_evaluate(node, values, model.opset_import))
        for name in node.output:
            if name in values:
                value = values[name]
                types[name] = helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
    return types


def _evaluate(
    node: onnx.NodeProto, values: dict[str, np.ndarray], opsets: Sequence[onnx.OperatorSetIdProto]
) -> dict[str, np.ndarray]:
    """The node's outputs computed from its known inputs; none where onnx's reference evaluator cannot run it."""
    inputs = list(dict.fromkeys(name for name in node.input if name))
    outputs = [name for name in node.output if name]
    graph = helper.make_graph(
        [node],
        "shape_arithmetic",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype), None) for n in inputs],
        [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in outputs],
    )
    try:
        results = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets)).run(
            None, {n: values[n] for n in inputs}
        )
    except (RuntimeError, ValueError, TypeError):
        return {}
    return {name: np.asarray(result) for name, result in zip(outputs, results, strict=True)}


def _dims(type_proto: onnx.TypeProto | None) -> list[int] | None:
    tensor = type_proto.tensor_type if type_proto is not None else None
    if tensor is None or not tensor.HasField("shape") or not all(d.HasField("dim_value") for d in tensor.shape.dim):
        return None
    return [d.dim_value for d in tensor.shape.dim]


def _count(type_proto: onnx.TypeProto) -> float:
    """Elements of a tensor type; infinite when its shape is not known."""
    dims = _dims(type_proto)
    return math.prod(dims) if dims is not None else math.inf


def _itemsize(data_type: int) -> int:
    return helper.tensor_dtype_to_np_dtype(data_type).itemsize


def _nbytes(type_proto: onnx.TypeProto | None) -> int | None:
    dims = _dims(type_proto)
    if type_proto is None or dims is None or type_proto.tensor_type.elem_type == TensorProto.UNDEFINED:
        return None
    return math.prod(dims) * _itemsize(type_proto.tensor_type.elem_type)


@dataclass(frozen=True)
class MemoryBudget:
    """What one build takes: every engine at one precision and batch, plus the builder's workspace, in bytes.

    The workspace counts once: the builder holds one pool while it builds one engine at a time. The tactics'
    scratch at run time is not modelled apart from the activations.
    """

    precision: str
    batch: Batch
    graphs: dict[str, GraphMemory]
    workspace: int

    @property
    def weights(self) -> int:
        return sum(g.weights for g in self.graphs.values())

    @property
    def activations(self) -> int:
        return sum(g.activations for g in self.graphs.values())

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.workspace

    @property
    def coverage(self) -> str:
        tensors = sum(g.tensors for g in self.graphs.values())
        return f"{tensors - sum(g.unknown for g in self.graphs.values())}/{tensors}"

    def describe(self) -> str:
        return (
            f"{gib(self.total)} GiB (weights {gib(self.weights)} + activations {gib(self.activations)} + workspace "
            f"{gib(self.workspace)} GiB at --batch {' '.join(map(str, self.batch))}; "
            f"{self.coverage} tensor shapes known)"
        )


class BundleMemory:
    """A bundle's graphs, each loaded once and without its weights' bytes, estimated at any precision and batch.

    Estimates are cached: a refusal's advice and the CLI's table ask for the same graph at the same batch again and
    again, and each estimate walks every node.
    """

    def __init__(self, bundle: Path, manifest: Manifest, workspace_bytes: int) -> None:
        self.bundle = Path(bundle)
        self.manifest = manifest
        self.workspace = workspace_bytes
        self.precisions = tuple(p for p in TRT_PRECISIONS if p in manifest.graphs)
        self._models: dict[Path, onnx.ModelProto] = {}
        self._graphs: dict[tuple[Path, int], GraphMemory] = {}

    def budget(self, precision: str, batch: Batch) -> MemoryBudget:
        graphs = {name: self._graph(name, precision, batch) for name in ENGINE_FILES}
        return MemoryBudget(precision, batch, graphs, self.workspace)

    def _graph(self, name: str, precision: str, batch: Batch) -> GraphMemory:
        path = self.bundle / self.manifest.graph(precision, name).file
        if path not in self._models:
            model = onnx.load(str(path), load_external_data=False)
            for tensor in model.graph.initializer:  # inline weights: keep dims and dtype, drop the bytes
                if math.prod(tensor.dims) > SHAPE_VALUE_LIMIT:
                    tensor.ClearField("raw_data")
            self._models[path] = model
        key = (path, batch[2])
        if key not in self._graphs:
            shapes = {tensor: hi for tensor, (_, _, hi) in profile_shapes(self.manifest, name, batch).items()}
            self._graphs[key] = graph_memory(self._models[path], shapes)
        return self._graphs[key]

    def largest_batch(self, precision: str, batch: Batch, usable: int) -> int | None:
        """The largest max batch, among MIN, MAX and the powers of two between, whose engines fit in `usable`."""
        lo, opt, hi = batch
        steps = sorted({lo, hi, *(1 << i for i in range(hi.bit_length()) if lo < 1 << i < hi)})
        first, last = 0, len(steps)
        while first < last:  # memory grows with the batch: bisect
            middle = (first + last) // 2
            size = steps[middle]
            if self.budget(precision, (lo, min(opt, size), size)).total <= usable:
                first = middle + 1
            else:
                last = middle
        return steps[first - 1] if first else None


BUDGET_HEADER = (
    "precision",
    "weights",
    "activations",
    "workspace",
    "total GiB",
    "shapes",
    "board",
    "usable GiB",
    "fits",
    "largest max batch",
)


def budget_rows(memory: BundleMemory, batch: Batch, boards: Sequence[Target]) -> list[tuple[str, ...]]:
    """One row per precision and board: the estimate at `batch`, and the largest max batch that fits the board."""
    rows = []
    for precision in memory.precisions:
        budget = memory.budget(precision, batch)
        for board in boards:
            usable = board.usable_bytes()
            largest = memory.largest_batch(precision, (batch[0], batch[1], memory.manifest.dims.batch.max), usable)
            rows.append(
                (
                    precision,
                    gib(budget.weights),
                    gib(budget.activations),
                    gib(budget.workspace),
                    gib(budget.total),
                    budget.coverage,
                    board.name,
                    gib(usable),
                    "yes" if budget.total <= usable else "no",
                    str(largest) if largest else "none",
                )
            )
    return rows


def budget_table(rows: Sequence[tuple[str, ...]]) -> str:
    rows = [BUDGET_HEADER, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(BUDGET_HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.engine_memory", description=__doc__)
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "--batch", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"), help="default: the bundle's export range"
    )
    p.add_argument("--workspace", type=float, default=2.0, help="builder workspace in GiB (default: %(default)s)")
    p.add_argument("--json", type=Path, help="also write the table here, one object per row")
    args = p.parse_args(argv)
    try:
        manifest = read_manifest(args.bundle)
        exported = manifest.dims.batch
        lo, opt, hi = args.batch or exported.as_tuple()
        if not exported.min <= lo <= opt <= hi <= exported.max:
            raise InputError(f"--batch {lo} {opt} {hi} must lie within {exported.min}..{exported.max}")
        memory = BundleMemory(args.bundle, manifest, int(args.workspace * GiB))
        print(
            f"{args.bundle}: TensorRT engines at --batch {lo} {opt} {hi}, --workspace {args.workspace:g} GiB "
            "(sizes in GiB; activations at the profile's max shapes, an upper bound)"
        )
        rows = budget_rows(memory, (lo, opt, hi), ORIN_BOARDS)
        print(budget_table(rows))
        if args.json:
            table = [dict(zip(BUDGET_HEADER, row, strict=True)) for row in rows]
            record = {
                "bundle": str(args.bundle),
                "batch": [lo, opt, hi],
                "rows": table,
                **provenance("export.engine_memory", args, argv),
            }
            args.json.write_text(json.dumps(record, indent=2) + "\n")
    except (AgffError, OSError) as err:
        return print_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())

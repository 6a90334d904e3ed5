"""The graph contract: each exported graph's tensors, their dtypes and axes, and the parity bars per precision.

The exporter names the ONNX inputs and outputs from here, the manifest
records them, TensorRT profiles are built from the dynamic axes, and every
runner checks its feeds against them; the Embedder, the PyTorch runner and the
input builders take tensor names from here instead of typing them again. No
torch: a Jetson reads it.

Two kinds of graph. A bundle stores three files per precision, so the language
model is stored once: the vision encoder (pixels -> image features), the
language encoder (token ids + image features -> the K+1 embeddings, for text
and image items alike) and the fp32 scorer. Users, the parity gate and the
PyTorch reference see the two item pipelines: the image encoder (vision, then
language) and the text encoder (language alone). `PIPELINES` says which stored
graphs each pipeline runs.

Shapes mix sizes and named dimensions. Dynamic ones (`DYNAMIC_DIMS`) vary per
call; the model's own sizes (`MODEL_DIMS`) are fixed once a model is known and
filled in by `GraphSpec.resolve`. A tensor with a model dimension of 0 is not
part of that model's graphs: a family without DeepStack (Qwen2-VL) has no
`deepstack_features`, one with it (Qwen3-VL) passes its taps from the vision
to the language encoder in that tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Dim = int | str
Feed = dict[str, np.ndarray]

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "int4")
# int8-dynamic's MatMulInteger is ONNX Runtime only; int4's block DequantizeLinear is opset 21, past the parser range
# every TensorRT 10.x target is held to (export.targets), so it stays ONNX Runtime only until a TensorRT build of it
# is seen.
TRT_PRECISIONS = ("fp32", "fp16", "int8")

# Axes a batch can be split along (and rejoined) without changing any item's result.
BATCH_DIMS = ("batch", "queries", "candidates")
# `patches`: patch slots per image row (the batch's largest image; the rest are padding its grid masks out).
# `image_tokens`: image features per item fed to the language encoder (1 for text items, whose feature is unused).
DYNAMIC_DIMS = (*BATCH_DIMS, "length", "patches", "image_tokens")
# `patch_dim`: 3 * patch_size**2 values per patch (one temporal slice of the stock processor's patch). `hidden`: the
# embeddings' width; `width`: the language model's (they differ where a Matryoshka embedder keeps fewer dimensions).
# `deepstack`: the vision taps the language model adds to its first layers (0: none).
MODEL_DIMS = ("patch_dim", "prompts", "hidden", "width", "deepstack")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # a numpy dtype name
    shape: tuple[Dim, ...]

    def resolve(self, sizes: Mapping[str, int]) -> TensorSpec:
        return TensorSpec(
            self.name, self.dtype, tuple(sizes.get(d, d) if isinstance(d, str) else d for d in self.shape)
        )

    def axis_of(self, dim: str) -> int | None:
        return self.shape.index(dim) if dim in self.shape else None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(data["name"], data["dtype"], tuple(data["shape"]))


@dataclass(frozen=True)
class Bar:
    """What a graph must reach against the PyTorch model: min cosine, max abs and top-1 retrieval agreement."""

    min_cosine: float
    max_abs: float | None = None
    top1: float | None = None

    def describe(self) -> str:
        parts = [f"cos>={self.min_cosine}"]
        if self.max_abs is not None:
            parts.append(f"abs<={self.max_abs:g}")
        if self.top1 is not None:
            parts.append(f"top1>={self.top1:.0%}")
        return " ".join(parts)

    def passes(self, min_cosine: float, max_abs: float) -> bool:
        return min_cosine >= self.min_cosine and (self.max_abs is None or max_abs <= self.max_abs)


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    bars: Mapping[str, Bar] = field(hash=False, compare=False)  # precision -> bar; bars and reasons: docs/parity.md

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def output(self) -> str:
        """The name of the graph's one output."""
        (only,) = self.outputs
        return only.name

    def resolve(self, sizes: Mapping[str, int]) -> GraphSpec:
        """This graph for one model: `sizes` gives each of MODEL_DIMS; tensors with a dimension of 0 are left out."""
        missing = [d for d in MODEL_DIMS if d not in sizes]
        if missing:
            raise ValueError(f"{self.name}: sizes lack {', '.join(missing)}")

        def resolve(tensors: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
            resolved = (t.resolve(sizes) for t in tensors)
            return tuple(t for t in resolved if 0 not in t.shape)

        return GraphSpec(self.name, resolve(self.inputs), resolve(self.outputs), self.bars)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Each input's dynamic axes by position, as `torch.onnx.export` names them."""
        return {
            t.name: {axis: d for axis, d in enumerate(t.shape) if d in DYNAMIC_DIMS}
            for t in self.inputs
            if any(d in DYNAMIC_DIMS for d in t.shape)
        }

    def check_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        """Refuse a feed whose names, dtypes or shapes are not this graph's; named dims must agree across inputs."""
        if set(feed) != set(self.input_names):
            raise ValueError(
                f"{self.name} takes inputs {', '.join(self.input_names)}; got {', '.join(sorted(feed)) or 'none'}"
            )
        seen: dict[str, tuple[int, str]] = {}
        for tensor in self.inputs:
            array = feed[tensor.name]
            if array.dtype != np.dtype(tensor.dtype):
                raise ValueError(f"{self.name}: {tensor.name} must be {tensor.dtype}, got {array.dtype}")
            if array.ndim != len(tensor.shape):
                raise ValueError(
                    f"{self.name}: {tensor.name} must have shape {_shape(tensor.shape)}, got {tuple(array.shape)}"
                )
            for size, dim in zip(array.shape, tensor.shape, strict=True):
                if isinstance(dim, int) and size != dim:
                    raise ValueError(
                        f"{self.name}: {tensor.name} must have shape {_shape(tensor.shape)}, got {tuple(array.shape)}"
                    )
                if isinstance(dim, str):
                    first = seen.setdefault(dim, (size, tensor.name))
                    if first[0] != size:
                        raise ValueError(f"{self.name}: {dim} is {first[0]} in {first[1]} but {size} in {tensor.name}")


def _shape(shape: tuple[Dim, ...]) -> str:
    return f"[{', '.join(map(str, shape))}]"


# Each image as rows of normalised patches in the vision tower's merge-block order, padded to the batch's largest.
PIXEL_VALUES = TensorSpec("pixel_values", "float32", ("batch", "patches", "patch_dim"))
# Each image's size in patches (rows, columns): what the padding hides and where each patch sits.
IMAGE_GRID = TensorSpec("image_grid", "int64", ("batch", 2))
INPUT_IDS = TensorSpec("input_ids", "int64", ("batch", "length"))
ATTENTION_MASK = TensorSpec("attention_mask", "int64", ("batch", "length"))
EMBEDDINGS = TensorSpec("embeddings", "float32", ("batch", "prompts", "hidden"))
IMAGE_FEATURES = TensorSpec("image_features", "float32", ("batch", "image_tokens", "width"))
# The DeepStack taps of a family that has them, tap j to be added after the language model's layer j.
DEEPSTACK_FEATURES = TensorSpec("deepstack_features", "float32", ("batch", "deepstack", "image_tokens", "width"))
QUERIES = TensorSpec("queries", "float32", ("queries", "prompts", "hidden"))
CANDIDATES = TensorSpec("candidates", "float32", ("candidates", "prompts", "hidden"))
SCORES = TensorSpec("scores", "float32", ("queries", "candidates"))

# Encoders at every precision (held to PyTorch fp32; docs/parity.md says why each bar is what it is).
BARS = {
    "fp32": Bar(0.99999, 1e-4),
    "fp16": Bar(0.999),
    "int8": Bar(0.98, top1=0.95),
    "int8-dynamic": Bar(0.98, top1=0.95),
    "int4": Bar(0.95, top1=0.90),
}

# The stored graphs. Their bars apply through the pipelines that run them (the vision encoder's output is not an
# embedding), so they carry none of their own.
VISION_ENCODER = GraphSpec("vision_encoder", (PIXEL_VALUES, IMAGE_GRID), (IMAGE_FEATURES, DEEPSTACK_FEATURES), {})
LANGUAGE_ENCODER = GraphSpec(
    "language_encoder", (INPUT_IDS, ATTENTION_MASK, IMAGE_FEATURES, IMAGE_GRID, DEEPSTACK_FEATURES), (EMBEDDINGS,), {}
)
# The scorer is exported once, in fp32, and shared by every precision.
SCORER = GraphSpec("scorer", (QUERIES, CANDIDATES), (SCORES,), {"fp32": Bar(0.99999, 1e-4)})

# The item pipelines.
IMAGE_ENCODER = GraphSpec("image_encoder", (PIXEL_VALUES, IMAGE_GRID, INPUT_IDS, ATTENTION_MASK), (EMBEDDINGS,), BARS)
TEXT_ENCODER = GraphSpec("text_encoder", (INPUT_IDS, ATTENTION_MASK), (EMBEDDINGS,), BARS)

STORED = {spec.name: spec for spec in (VISION_ENCODER, LANGUAGE_ENCODER, SCORER)}
STORED_NAMES = tuple(STORED)
STORED_ENCODERS = (VISION_ENCODER.name, LANGUAGE_ENCODER.name)
GRAPHS = {spec.name: spec for spec in (IMAGE_ENCODER, TEXT_ENCODER, SCORER)}
GRAPH_NAMES = tuple(GRAPHS)
ENCODERS = (IMAGE_ENCODER.name, TEXT_ENCODER.name)
# Which stored graphs each pipeline runs, in order.
PIPELINES = {
    IMAGE_ENCODER.name: (VISION_ENCODER.name, LANGUAGE_ENCODER.name),
    TEXT_ENCODER.name: (LANGUAGE_ENCODER.name,),
    SCORER.name: (SCORER.name,),
}


def model_sizes(
    patch_size: int, num_prompts: int, hidden_size: int, width: int | None = None, deepstack: int = 0
) -> dict[str, int]:
    """MODEL_DIMS for one model; `width` (the language model's) is `hidden_size` unless a Matryoshka embedder keeps
    fewer dimensions."""
    return {
        "patch_dim": 3 * patch_size * patch_size,
        "prompts": num_prompts,
        "hidden": hidden_size,
        "width": hidden_size if width is None else width,
        "deepstack": deepstack,
    }


def resolved_graphs(sizes: Mapping[str, int]) -> dict[str, GraphSpec]:
    """The pipelines (what users and the gate run) for one model."""
    return {name: spec.resolve(sizes) for name, spec in GRAPHS.items()}


def resolved_stored(sizes: Mapping[str, int]) -> dict[str, GraphSpec]:
    """The stored graphs (what a bundle holds and TensorRT builds) for one model."""
    return {name: spec.resolve(sizes) for name, spec in STORED.items()}

"""The bundle manifest: everything a runtime needs beside the graphs, and nothing it must guess.

A typed `Manifest` read from and written to plain JSON with the standard
library, so a Jetson runtime without torch reads it. Written by
`export.to_onnx`, extended by `export.to_trt`. Every field is read by some
part of the project; the graphs' tensors are the contract's
(`agff_deploy.contract`) as exported.

`format_version` is the schema version. A reader refuses a newer one, naming
both, and an older one with the command that re-exports it: version 1 bundles
stored the language model in both an image and a text encoder graph, version 2
stored a vision and a language encoder per precision that took square images
as pixels, version 3 takes images of any size as rows of patches with their
grids (agff_deploy.contract), version 4 names the model family and carries
what Qwen3-VL adds (DeepStack taps, the Matryoshka width, the empty-item
text) and where a single-vector embedder's task instruction goes. A version 3
bundle is read as the Qwen2-VL bundle it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .contract import PRECISIONS, TensorSpec, model_sizes
from .errors import ArtifactError, MissingFileError, NotInBundleError
from .preprocessing import ImagePreprocessor, NativeImageSettings, NativePreprocessor
from .tokenization import TaskSlot

MANIFEST_FILE = "manifest.json"
FORMAT = "agff-bundle"
FORMAT_VERSION = 4
# Older versions still read: everything version 4 adds has the value a version 3 bundle implies.
READABLE_VERSIONS = (3, 4)
# What each older layout was, for the line that refuses it.
OLDER_LAYOUTS = {1: "the language model stored per encoder", 2: "square images only, taken as pixels"}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelDims:
    """The embeddings' shape `[num_prompts, hidden_size]`, the language model's `width` (the image features'), its
    `deepstack` taps, and the `family` (config model_type) the graphs come from."""

    num_prompts: int
    hidden_size: int
    width: int
    deepstack: int = 0
    family: str = "qwen2_vl"
    matryoshka: bool = False  # trained so that the leading dimensions are an embedding: a server may cut them


@dataclass(frozen=True)
class ImageFormat:
    """How an image becomes the vision encoder's patches.

    `resize` "fixed": every image squashed to `size`, `num_image_tokens` each. "native": each image resized by
    Qwen2-VL's smart_resize within [min_pixels, max_pixels] and `max_ratio`, at most `num_image_tokens`.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_image_tokens: int
    patch_size: int
    merge_size: int
    resize: str
    min_pixels: int
    max_pixels: int
    max_ratio: float

    def preprocessor(self) -> ImagePreprocessor | NativePreprocessor:
        """The preprocessing these images take: native resolution, or the fixed size with the same normalisation."""
        if self.resize == "fixed":
            return ImagePreprocessor(*self.size, mean=self.mean, std=self.std)
        settings = NativeImageSettings(
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            patch_size=self.patch_size,
            merge_size=self.merge_size,
            mean=self.mean,
            std=self.std,
            max_ratio=self.max_ratio,
        )
        return NativePreprocessor(settings)


@dataclass(frozen=True)
class TokenizerFile:
    """The tokenizer and the chat turn items are formatted in (`chat_head` + item + `chat_tail`)."""

    file: str
    sha256: str
    max_text_tokens: int
    chat_head: str
    chat_tail: str
    empty_text: str = ""  # what a text-only item with no text becomes
    task: TaskSlot | None = None  # where a call's task instruction goes in `chat_head` (single-vector embedders)


@dataclass(frozen=True)
class Fusion:
    """The learned fused-similarity parameters (the scorer graph holds them too; numpy scoring reads them here)."""

    t_in: float
    t_f: float
    pattern_bias: tuple[float, ...]
    temperature: float


@dataclass(frozen=True)
class BatchRange:
    min: int
    opt: int
    max: int

    def as_tuple(self) -> tuple[int, int, int]:
        return self.min, self.opt, self.max


@dataclass(frozen=True)
class LengthRange:
    min: int
    max: int


@dataclass(frozen=True)
class Dims:
    """The ranges the graphs were exported for: TensorRT profiles stay inside them."""

    batch: BatchRange
    image_length: LengthRange
    text_length: LengthRange


@dataclass(frozen=True)
class ExternalData:
    file: str
    bytes: int


@dataclass(frozen=True)
class GraphEntry:
    file: str
    sha256: str
    external_data: tuple[ExternalData, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backends: tuple[str, ...]
    ungated: bool = False  # added without the parity gate (bench.scale --ungated-int8-dynamic)


@dataclass(frozen=True)
class Source:
    checkpoint: str
    weights_sha256: str
    config_sha256: str


@dataclass(frozen=True)
class ParityRow:
    """One comparison of the gate: a graph on one input set (or the retrieval agreement) against its bar."""

    precision: str
    graph: str
    inputs: str
    min_cosine: float | None
    max_abs: float | None
    bar: str
    passed: bool
    top1: float | None = None


@dataclass(frozen=True)
class Parity:
    """The export gate's outcome: rows of the precisions kept, and why the others were left out."""

    passed: bool
    rows: tuple[ParityRow, ...]
    left_out: Mapping[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineEntry:
    file: str
    sha256: str
    source: str  # the ONNX graph it was built from, inside the bundle
    source_sha256: str


@dataclass(frozen=True)
class Engines:
    """TensorRT engines built on one machine: refused elsewhere (another TensorRT or GPU) and when stale."""

    precision: str
    tensorrt: str
    gpu: str
    graphs: Mapping[str, EngineEntry]


@dataclass(frozen=True)
class GateRecord:
    """The gate's input sets and PyTorch's outputs on them (export.gate_reference): parity without the checkpoint."""

    file: str
    sha256: str
    bytes: int
    agreement: str = ""  # how many held-out pairs the top-1 check ran, and why that many


@dataclass(frozen=True)
class Manifest:
    created_by: str
    model: ModelDims
    image: ImageFormat
    tokenizer: TokenizerFile
    fusion: Fusion
    dims: Dims
    graphs: Mapping[str, Mapping[str, GraphEntry]]
    source: Source
    parity: Parity | None = None
    engines: Engines | None = None
    gate: GateRecord | None = None
    # precision -> the modules or nodes kept in a wider type than the precision's own (fp16 overflow guard, int8)
    kept_in_float: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def fixed_size(self) -> tuple[int, int] | None:
        """The size every image is squashed to, or None at native resolution: what reloading the checkpoint for
        this bundle needs to say."""
        return self.image.size if self.image.resize == "fixed" else None

    def sizes(self) -> dict[str, int]:
        """The contract's model dimensions for this bundle."""
        model = self.model
        return model_sizes(self.image.patch_size, model.num_prompts, model.hidden_size, model.width, model.deepstack)

    def graph(self, precision: str, name: str) -> GraphEntry:
        """One graph's entry, or a KeyError that says what to export or choose instead."""
        if precision not in self.graphs:
            raise NotInBundleError(
                f"bundle has no {precision} graphs (it has {', '.join(self.graphs)}); {self._advice(precision)}"
            )
        if name not in self.graphs[precision]:
            raise NotInBundleError(f"bundle's {precision} graphs lack {name}")
        return self.graphs[precision][name]

    def _advice(self, precision: str) -> str:
        """What to do instead, in flags `python -m export.to_onnx` and `agff-run` both accept."""
        if precision not in PRECISIONS:
            choices = " or ".join(f"--precision {p}" for p in self.graphs)
            return f"{precision} is not a precision bundles hold ({', '.join(PRECISIONS)}): choose {choices}"
        left_out = self.parity.left_out.get(precision) if self.parity else None
        why = f"the parity gate left it out ({'; '.join(left_out)}); " if left_out else ""
        return f"{why}export with --precision {precision}"

    def to_json(self) -> dict[str, Any]:
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}
        graphs = data["graphs"]
        for entries in graphs.values():
            for entry in entries.values():
                if not entry["ungated"]:
                    del entry["ungated"]
        for key in ("parity", "engines", "gate"):
            if data[key] is None:
                del data[key]
        return json.loads(json.dumps(data))  # tuples -> lists: what reading the file gives

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = MANIFEST_FILE) -> Manifest:
        """A manifest of this or an older format version; a newer one is refused, naming both versions."""
        if data.get("format") != FORMAT:
            raise ArtifactError(f"{where}: format is {data.get('format')!r}, expected {FORMAT!r}")
        version = data.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"{where}: format_version {version} (written by {data.get('created_by', 'a newer agff-deploy')}) is "
                f"newer than agff-deploy {__version__} reads (format_version {FORMAT_VERSION}); upgrade agff-deploy"
            )
        if version not in READABLE_VERSIONS:
            raise ArtifactError(
                f"{where}: format_version {version} is an older bundle layout "
                f"({OLDER_LAYOUTS.get(version, 'unversioned')}) that agff-deploy {__version__} no longer reads; "
                "re-export it with "
                "`python -m export.to_onnx CKPT`"
            )
        missing = [key for key in ("model", "image", "tokenizer", "fusion", "graphs") if key not in data]
        if missing:
            raise ArtifactError(f"{where} lacks {', '.join(missing)}; re-export the bundle")
        try:
            return cls._from_fields(data)
        except (KeyError, TypeError) as err:
            raise ArtifactError(f"{where}: malformed manifest (field {err}); re-export the bundle") from err

    @classmethod
    def _from_fields(cls, data: Mapping[str, Any]) -> Manifest:
        return cls(
            created_by=data.get("created_by", "an unknown agff-deploy"),
            model=_model_dims(data["model"]),
            image=_image(data["image"]),
            tokenizer=_tokenizer(data["tokenizer"]),
            fusion=_fusion(data["fusion"]),
            dims=_dims(data["dims"]),
            graphs={p: {n: _graph_entry(e) for n, e in graphs.items()} for p, graphs in data["graphs"].items()},
            source=Source(**_pick(data["source"], Source)),
            parity=_parity(data["parity"]) if "parity" in data else None,
            engines=_engines(data["engines"]) if "engines" in data else None,
            gate=GateRecord(**data["gate"]) if "gate" in data else None,
            kept_in_float={p: tuple(names) for p, names in data.get("kept_in_float", {}).items()},
        )


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of a bundle folder, checked for format, version and the fields every runtime reads."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} not found: a bundle folder is written by `python -m export.to_onnx CKPT`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from err
    return Manifest.from_json(data, str(path))


def write_manifest(folder: str | Path, manifest: Manifest) -> Path:
    path = Path(folder) / MANIFEST_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    tmp.replace(path)
    return path


def check_external_data(bundle: str | Path, entry: GraphEntry) -> None:
    """Every external-data file a graph needs is there at its full size, or an error naming it and the graph.

    Sizes, not hashes: a truncated copy is the common failure, and hashing
    gigabytes at every start would cost seconds. The graph file's own sha256
    is checked by the runner's loader.
    """
    graph = Path(bundle) / entry.file
    for data in entry.external_data:
        path = Path(bundle) / data.file
        if not path.is_file():
            raise MissingFileError(
                f"{path} is missing: it holds the weights of {graph}; copy the whole bundle folder, "
                ".onnx.data files included"
            )
        size = path.stat().st_size
        if size != data.bytes:
            raise ArtifactError(
                f"{path} is {size} bytes but {graph} needs {data.bytes}: a truncated or altered copy; copy it again"
            )


def _pick(data: Mapping[str, Any], kind: type) -> dict[str, Any]:
    """The keys of `data` that `kind` has fields for (version 1 files hold more)."""
    names = {f.name for f in dataclasses.fields(kind)}
    return {k: v for k, v in data.items() if k in names}


def _tokenizer(data: Mapping[str, Any]) -> TokenizerFile:
    task = data.get("task")
    return TokenizerFile(**{**_pick(data, TokenizerFile), "task": TaskSlot(**task) if task else None})


def _model_dims(data: Mapping[str, Any]) -> ModelDims:
    return ModelDims(**{"width": data["hidden_size"], **_pick(data, ModelDims)})


def _image(data: Mapping[str, Any]) -> ImageFormat:
    return ImageFormat(**{**data, "size": tuple(data["size"]), "mean": tuple(data["mean"]), "std": tuple(data["std"])})


def _fusion(data: Mapping[str, Any]) -> Fusion:
    return Fusion(data["t_in"], data["t_f"], tuple(data["pattern_bias"]), data["temperature"])


def _dims(data: Mapping[str, Any]) -> Dims:
    return Dims(BatchRange(**data["batch"]), LengthRange(**data["image_length"]), LengthRange(**data["text_length"]))


def _graph_entry(data: Mapping[str, Any]) -> GraphEntry:
    return GraphEntry(
        file=data["file"],
        sha256=data["sha256"],
        external_data=tuple(ExternalData(**d) for d in data.get("external_data", [])),
        inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
        outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
        backends=tuple(data["backends"]),
        ungated=data.get("ungated", False),
    )


def _parity(data: Mapping[str, Any]) -> Parity:
    rows = tuple(ParityRow(**row) for row in data["rows"])
    return Parity(data["passed"], rows, dict(data.get("left_out", {})))


def _engines(data: Mapping[str, Any]) -> Engines:
    graphs = {name: EngineEntry(**_pick(entry, EngineEntry)) for name, entry in data["graphs"].items()}
    return Engines(data["precision"], data["tensorrt"], data["gpu"], graphs)

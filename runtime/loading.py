"""Path -> backend -> runners: what `Embedder.load` and `agff-run --engine` accept.

model.plan / *.plan / *.engine   TensorRT (its bundle's manifest beside it)
*.onnx                           ONNX Runtime (the bundle's manifest in a parent folder)
folder with manifest.json        a bundle: TensorRT if it holds engines of the precision asked for (any, if none
                                 is) and TensorRT is here, else ONNX Runtime
folder with agff_config.json     a checkpoint: PyTorch

Every runner gets its graph's contract resolved for this model; a bundle
whose recorded graph tensors differ from it is refused before anything loads.
Runners are built per stored graph and joined into the item pipelines
(`runtime.item_encoders`); callers get the pipelines by name.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agff_deploy.contract import (
    GRAPH_NAMES,
    PIPELINES,
    VISION_ENCODER,
    GraphSpec,
    resolved_graphs,
    resolved_stored,
)
from agff_deploy.errors import ArtifactError, InputError, MissingFileError, NotInBundleError
from agff_deploy.manifest import MANIFEST_FILE, GraphEntry, Manifest, check_external_data, read_manifest

from .item_encoders import item_runners
from .ort_runner import REEXPORT, OnnxSessionLoader, OrtRunner
from .runner import ArtifactMismatch, Runner, verify_sha256
from .spec import ModelSpec

BACKENDS = ("tensorrt", "onnxruntime", "pytorch")
PLAN_SUFFIXES = (".plan", ".engine")


@dataclass
class LoadedModel:
    """What an `Embedder` is made of."""

    spec: ModelSpec
    runners: dict[str, Runner]
    backend: str
    source: Path
    model_id: str  # sha256 of the checkpoint weights every artifact of this model comes from
    precision: str  # the bundle precision (TensorRT: the engines'); "fp32" for a checkpoint in PyTorch


def load_model(
    path: Path, backend: str | None = None, precision: str | None = None, threads: int | None = None
) -> LoadedModel:
    if backend is not None and backend not in BACKENDS:
        raise InputError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    kind = _what(path)
    if kind == "checkpoint":
        if backend not in (None, "pytorch"):
            raise InputError(
                f"{path} is a checkpoint: export it first (`python -m export.to_onnx {path}`) to use {backend}"
            )
        return _torch_model(path, None)
    bundle = bundle_folder_of(path if kind == "bundle" else path.parent)
    if bundle is None:
        raise MissingFileError(f"no {MANIFEST_FILE} beside {path}: keep graphs and engines in their bundle folder")
    manifest = read_manifest(bundle)
    if kind == "onnx" and precision is None:
        precision = precision_of_graph(manifest, bundle, path)
    chosen = backend or {"plan": "tensorrt", "onnx": "onnxruntime"}.get(kind) or _bundle_backend(manifest, precision)
    if chosen == "pytorch":
        return _torch_model(Path(manifest.source.checkpoint), manifest.fixed_size())
    spec = ModelSpec.from_manifest(bundle, manifest)
    verify_sha256(spec.tokenizer_file, manifest.tokenizer.sha256, REEXPORT)
    model_id = manifest.source.weights_sha256
    if chosen == "tensorrt":
        engines = manifest.engines.precision if manifest.engines else ""
        return LoadedModel(spec, _trt_runners(bundle, manifest, precision), "tensorrt", bundle, model_id, engines)
    chosen_precision = precision or default_precision(manifest)
    runners = ort_runners(bundle, manifest, chosen_precision, threads)
    return LoadedModel(spec, runners, "onnxruntime", bundle, model_id, chosen_precision)


def bundle_folder_of(path: Path) -> Path | None:
    """The bundle folder holding `path` (itself, its parent or grandparent), if any."""
    for folder in (path, path.parent, path.parent.parent):
        if (folder / MANIFEST_FILE).is_file():
            return folder
    return None


def default_precision(manifest: Manifest) -> str:
    """fp32 where the bundle has it; a device bundle's first precision otherwise."""
    return "fp32" if "fp32" in manifest.graphs else next(iter(manifest.graphs))


def precision_of_graph(manifest: Manifest, bundle: Path, graph: Path) -> str:
    for precision, graphs in manifest.graphs.items():
        if any((bundle / e.file).resolve() == graph.resolve() for e in graphs.values()):
            return precision
    raise ArtifactError(f"{graph} is not listed in {bundle / MANIFEST_FILE}")


def _tensorrt_here() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("cuda") is not None


def _what(path: Path) -> str:
    if path.suffix in PLAN_SUFFIXES:
        return "plan"
    if path.suffix == ".onnx":
        return "onnx"
    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        return "bundle"
    if path.is_dir() and (path / "agff_config.json").is_file():
        return "checkpoint"
    if not path.exists():
        raise MissingFileError(f"{path} does not exist")
    raise InputError(
        f"{path} is neither a TensorRT plan (.plan), an ONNX graph (.onnx), a bundle folder (with {MANIFEST_FILE}) "
        "nor a checkpoint folder (with agff_config.json)"
    )


def _bundle_backend(manifest: Manifest, precision: str | None) -> str:
    engines = manifest.engines
    usable = engines is not None and precision in (None, engines.precision)
    return "tensorrt" if usable and _tensorrt_here() else "onnxruntime"


def _checked(bundle: Path, entry: GraphEntry, spec: GraphSpec) -> GraphEntry:
    """`entry`, once its graph and data files are there and whole and its recorded tensors are the contract's."""
    if not (bundle / entry.file).is_file():
        raise MissingFileError(
            f"{bundle / entry.file} is missing: copy the whole bundle folder, or re-export it with `{REEXPORT}`"
        )
    check_external_data(bundle, entry)
    if (entry.inputs, entry.outputs) != (spec.inputs, spec.outputs):
        raise ArtifactMismatch(
            f"{bundle / entry.file} was exported with other inputs or outputs than this agff-deploy runs; "
            f"re-export the bundle with `{REEXPORT}`"
        )
    return entry


def stored_graphs(pipelines: Sequence[str]) -> tuple[str, ...]:
    """The stored graphs the named pipelines run, each once."""
    return tuple(dict.fromkeys(graph for name in pipelines for graph in PIPELINES[name]))


def _pipelines(manifest: Manifest, stored: dict[str, Runner]) -> dict[str, Runner]:
    return item_runners(stored, resolved_graphs(manifest.sizes()))


def ort_runners(
    bundle: Path,
    manifest: Manifest,
    precision: str,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    graphs: Sequence[str] = GRAPH_NAMES,
    check_hashes: bool = True,
    session_config: Mapping[str, str] | None = None,
) -> dict[str, Runner]:
    """ONNX Runtime runners of the pipelines `graphs` at `precision` (not yet active: each stored graph opens its
    session when a pipeline that runs it activates); without `check_hashes` a graph is not compared with its
    manifest's sha256 when it loads; `session_config` goes to every session's config entries.

    On the CPU the vision encoder takes one image per call: at 448 px an image is already 1,024 patches, large
    enough for its GEMMs to run at the machine's peak, while a batch of 8 keeps 8 images' attention and MLP
    activations live at once. `bench.scale` sets this against the one-graph layout, which runs the whole batch
    (docs/scale-2b.md).
    """
    specs = resolved_stored(manifest.sizes())
    stored: dict[str, Runner] = {}
    for name in stored_graphs(graphs):
        entry = _checked(bundle, manifest.graph(precision, name), specs[name])
        if entry.ungated:
            warnings.warn(
                f"{bundle / entry.file} was added without the parity gate: its accuracy is not checked", stacklevel=2
            )
        expected = entry.sha256 if check_hashes else None
        loader = OnnxSessionLoader(bundle / entry.file, expected, providers, threads, session_config)
        stored[name] = OrtRunner(loader, specs[name])
        if name == VISION_ENCODER.name and loader.providers()[0] == "CPUExecutionProvider":
            stored[name].limits["batch"] = 1
    return _pipelines(manifest, stored)


def _trt_runners(bundle: Path, manifest: Manifest, precision: str | None) -> dict[str, Runner]:
    from .trt_runner import EngineLoader, TrtRunner

    engines = manifest.engines
    rebuild = f"python -m export.to_trt {bundle} --precision {precision or 'fp16'}"
    if engines is None:
        raise MissingFileError(f"{bundle} has no TensorRT engines; build them with `{rebuild}`")
    if precision not in (None, engines.precision):
        raise NotInBundleError(
            f"{bundle}'s TensorRT engines are {engines.precision}; build {precision} ones with `{rebuild}`"
        )
    specs = resolved_stored(manifest.sizes())
    stored: dict[str, Runner] = {}
    for name, entry in engines.graphs.items():
        graph = manifest.graph(engines.precision, name)
        if (graph.file, graph.sha256) != (entry.source, entry.source_sha256):
            raise ArtifactMismatch(
                f"{bundle / entry.file} was built from another {entry.source} than the bundle holds now; "
                f"rebuild it with `python -m export.to_trt {bundle} --precision {engines.precision}`"
            )
        if (graph.inputs, graph.outputs) != (specs[name].inputs, specs[name].outputs):
            raise ArtifactMismatch(
                f"{bundle / entry.file} was built for other inputs or outputs than this agff-deploy runs; "
                f"re-export the bundle with `{REEXPORT}`"
            )
        stored[name] = TrtRunner(EngineLoader(bundle / entry.file, engines, entry.sha256), specs[name])
    return _pipelines(manifest, stored)


def _torch_model(checkpoint: Path, image_size: tuple[int, int] | None) -> LoadedModel:
    from agff_deploy.checkpoint import load_checkpoint
    from agff_deploy.weights import weights_sha256

    from .torch_runner import TorchRunner

    model, _ = load_checkpoint(checkpoint, image_size=image_size)
    config = model.config
    fusion = {
        "t_in": model.fusion.t_in,
        "t_f": float(model.fusion.t_f.detach()),
        "pattern_bias": tuple(float(b) for b in model.fusion.pattern_bias.detach()),
        "temperature": float(model.temperature.detach()),
    }
    specs = resolved_graphs(config.sizes())
    runners: dict[str, Runner] = {name: TorchRunner(model, spec) for name, spec in specs.items()}
    spec = ModelSpec.from_checkpoint(checkpoint, fusion, image_size)
    return LoadedModel(spec, runners, "pytorch", checkpoint, weights_sha256(checkpoint), "fp32")

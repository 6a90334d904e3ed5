"""Path -> backend -> runners: what `Embedder.load` and `agff-run --engine` accept.

model.plan / *.plan / *.engine   TensorRT (its bundle's manifest beside it)
*.onnx                           ONNX Runtime (the bundle's manifest in a parent folder)
folder with manifest.json        a bundle: TensorRT if it holds engines and TensorRT is here, else ONNX Runtime
folder with agff_config.json     a checkpoint: PyTorch
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from agff_deploy.manifest import MANIFEST_FILE, read_manifest

from .embedder import BACKENDS, GRAPHS, Embedder, bundle_folder_of, graph_file, precision_of_graph
from .ort_runner import OrtRunner
from .runner import Runner
from .spec import ModelSpec

PLAN_SUFFIXES = (".plan", ".engine")


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
        raise FileNotFoundError(f"{path} does not exist")
    raise ValueError(
        f"{path} is neither a TensorRT plan (.plan), an ONNX graph (.onnx), a bundle folder (with {MANIFEST_FILE}) "
        "nor a checkpoint folder (with agff_config.json)"
    )


def _ort_runners(bundle: Path, manifest: dict[str, Any], precision: str, threads: int | None) -> dict[str, Runner]:
    runners: dict[str, Runner] = {}
    for name in GRAPHS:
        path, sha = graph_file(manifest, bundle, precision, name)
        runners[name] = OrtRunner(path, sha, threads=threads)
    return runners


def _trt_runners(bundle: Path, manifest: dict[str, Any]) -> dict[str, Runner]:
    from .trt_runner import TrtRunner

    engines = manifest.get("engines")
    if not engines:
        raise FileNotFoundError(f"{bundle} has no TensorRT engines; build them with `python -m export.to_trt {bundle}`")
    return {name: TrtRunner(bundle / e["file"], engines, e["sha256"]) for name, e in engines["graphs"].items()}


def _torch_embedder(cls: type[Embedder], checkpoint: Path, image_size: tuple[int, int] | None) -> Embedder:
    from agff_deploy.weights import weights_sha256

    from .torch_runner import TorchRunner

    runners = TorchRunner.from_checkpoint(checkpoint, GRAPHS, image_size)
    model = runners["image_encoder"].model
    fusion = {
        "t_in": model.fusion.t_in,
        "t_f": float(model.fusion.t_f.detach()),
        "pattern_bias": tuple(float(b) for b in model.fusion.pattern_bias.detach()),
        "temperature": float(model.temperature.detach()),
    }
    spec = ModelSpec.from_checkpoint(checkpoint, fusion, image_size)
    return cls(spec, dict(runners), "pytorch", checkpoint, weights_sha256(checkpoint))


def load_embedder(
    cls: type[Embedder], path: Path, backend: str | None, precision: str | None, threads: int | None
) -> Embedder:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    kind = _what(path)
    if kind == "checkpoint":
        if backend not in (None, "pytorch"):
            raise ValueError(
                f"{path} is a checkpoint: export it first (`python -m export.to_onnx {path}`) to use {backend}"
            )
        return _torch_embedder(cls, path, None)
    bundle = bundle_folder_of(path if kind == "bundle" else path.parent)
    if bundle is None:
        raise FileNotFoundError(f"no {MANIFEST_FILE} beside {path}: keep graphs and engines in their bundle folder")
    manifest = read_manifest(bundle)
    spec = ModelSpec.from_manifest(bundle, manifest)
    if kind == "onnx" and precision is None:
        precision = precision_of_graph(manifest, bundle, path)
    chosen = backend or {"plan": "tensorrt", "onnx": "onnxruntime"}.get(kind)
    if chosen is None:
        chosen = "tensorrt" if manifest.get("engines") and _tensorrt_here() else "onnxruntime"
    if chosen == "pytorch":
        return _torch_embedder(cls, Path(manifest["source"]["checkpoint"]), tuple(manifest["image"]["size"]))
    model_id = manifest["source"]["weights_sha256"]
    if chosen == "tensorrt":
        return cls(spec, _trt_runners(bundle, manifest), "tensorrt", bundle, model_id)
    return cls(spec, _ort_runners(bundle, manifest, precision or "fp32", threads), "onnxruntime", bundle, model_id)

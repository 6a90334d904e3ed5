"""`python -m export.to_trt BUNDLE`: build TensorRT engines from a bundle's graphs, on the machine that runs them.

Strongly typed networks on TensorRT 10.x and 11.x: precision comes from the
ONNX (fp32, mixed fp16, or int8 Q/DQ), never from builder flags (TensorRT 11
removed them). One optimisation profile per dynamic input, a reusable timing
cache, and the manifest records what each engine was built from and for. On a
board target (a Jetson) the engines' memory, estimated from the graphs
(export.engine_memory), is checked before TensorRT starts.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agff_deploy.manifest import (
    TRT_PRECISIONS,
    check_external_data,
    graph_entry,
    read_manifest,
    sha256_file,
    write_manifest,
)

from .targets import TARGETS, Target, get_target
from .trt_lint import lint_file

ENGINE_FILES = {"image_encoder": "model.plan", "text_encoder": "text_encoder.plan", "scorer": "scorer.plan"}
SCORER_CANDIDATES = (1, 1024, 65536)
NO_TENSORRT = (
    "TensorRT is not installed here. Engines are not portable across GPUs or TensorRT versions, so build them on "
    "the machine that runs them: copy the bundle there and run `python -m export.to_trt BUNDLE`. On a Jetson use "
    "JetPack's TensorRT (python3-libnvinfer); on an x86 GPU host `pip install 'agff-deploy[gpu]'`."
)

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


class TensorRTMissing(RuntimeError):
    pass


def tensorrt_version() -> str:
    """The installed TensorRT's version, or TensorRTMissing (a stubs-only `tensorrt` namespace counts as missing)."""
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTMissing(NO_TENSORRT) from err
    if not hasattr(tensorrt, "Builder"):
        raise TensorRTMissing(NO_TENSORRT)
    return str(tensorrt.__version__)


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str
    memory_bytes: int


def query_device(index: int = 0) -> DeviceInfo:
    """Name, compute capability and memory of a CUDA device, through cuda-python."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    err, props = cudart.cudaGetDeviceProperties(index)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"no usable CUDA device {index}: {err}")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(name.rstrip("\x00"), f"{props.major}.{props.minor}", int(props.totalGlobalMem))


def profile_shapes(manifest: dict[str, Any], graph: str, batch: tuple[int, int, int]) -> Profile:
    """(min, opt, max) shape of every dynamic input, from the manifest's dims."""
    h, w = manifest["image"]["size"]
    k, d = manifest["model"]["num_prompts"], manifest["model"]["hidden_size"]
    lo, opt, hi = batch
    if graph == "scorer":
        few, typical, many = SCORER_CANDIDATES
        return {
            "queries": ((1, k, d), (opt, k, d), (hi, k, d)),
            "candidates": ((few, k, d), (typical, k, d), (many, k, d)),
        }
    length = manifest["dims"]["image_length" if graph == "image_encoder" else "text_length"]
    typical = min(length["max"], length["min"] + 16)
    tokens = ((lo, length["min"]), (opt, typical), (hi, length["max"]))
    shapes: Profile = {"input_ids": tokens, "attention_mask": tokens}
    if graph == "image_encoder":
        shapes["pixel_values"] = ((lo, 3, h, w), (opt, 3, h, w), (hi, 3, h, w))
    return shapes


def build_engine(onnx_path: Path, profile: Profile, workspace_bytes: int, cache_path: Path | None) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    optimization = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        optimization.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    config.add_optimization_profile(optimization)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    if cache_path:
        _write_atomically(cache_path, bytes(cache.serialize()))
    return bytes(plan)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


@dataclass(frozen=True)
class BuildRequest:
    bundle: Path
    precision: str
    batch: tuple[int, int, int]
    workspace_gb: float
    timing_cache: Path | None
    target: Target


def check_memory(request: BuildRequest, manifest: dict[str, Any], usable: int) -> str:
    """The engines' estimated device memory (export.engine_memory) against `usable`: a note when they fit, otherwise a
    ValueError with the numbers and what of this bundle would fit, so nobody waits for a build that cannot load."""
    from .engine_memory import BundleMemory, gib  # engine_memory reads this module's profile shapes

    target, precision, (lo, opt, _) = request.target, request.precision, request.batch
    memory = BundleMemory(request.bundle, manifest, int(request.workspace_gb * 2**30))
    budget = memory.budget(precision, request.batch)
    message = (
        f"{precision} engines need about {budget.describe()}; {gib(usable)} GiB usable on {target.description}, "
        f"{target.reserve_gb:g} GiB kept back for the system, CUDA and TensorRT"
    )
    if budget.total <= usable:
        return message
    others = [memory.budget(p, request.batch) for p in memory.precisions if p != precision and p in target.precisions]
    fits = [f"--precision {b.precision} ({gib(b.total)} GiB)" for b in others if b.total <= usable]
    largest = memory.largest_batch(precision, request.batch, usable)
    if largest is not None:
        smaller = memory.budget(precision, (lo, min(opt, largest), largest))
        fits.append(f"--batch {lo} {min(opt, largest)} {largest} at {precision} ({gib(smaller.total)} GiB)")
    advice = (
        " or ".join(fits)
        or f"nothing this bundle holds at --workspace {request.workspace_gb:g}; lower it or use a bigger board"
    )
    raise ValueError(f"too large: {message}. Would fit: {advice}")


def preflight(request: BuildRequest, manifest: dict[str, Any]) -> list[Path]:
    """Everything that can be checked without TensorRT: precision, opset, lint, and memory on a target that fixes
    its memory (a Jetson board). Returns the graphs to build."""
    target, precision = request.target, request.precision
    if precision not in TRT_PRECISIONS or precision not in target.precisions:
        raise ValueError(
            f"--precision {precision} cannot build for {target.name}; choose {', '.join(target.precisions)}"
        )
    lo, opt, hi = request.batch
    bundle_batch = manifest["dims"]["batch"]
    if not bundle_batch["min"] <= lo <= opt <= hi <= bundle_batch["max"]:
        raise ValueError(
            f"--batch {lo} {opt} {hi} must lie within the bundle's exported batch range "
            f"{bundle_batch['min']}..{bundle_batch['max']}; re-export with --batch to widen it"
        )
    entries = [graph_entry(manifest, precision, name) for name in ENGINE_FILES]
    for entry in entries:
        check_external_data(request.bundle, entry)
    paths = [request.bundle / entry["file"] for entry in entries]
    for path in paths:
        problems = lint_file(path, target)
        if problems:
            raise ValueError(f"{path} will not build for {target.name}: {'; '.join(problems)}")
    if target.memory_gb is not None:
        print(check_memory(request, manifest, target.usable_bytes()))
    return paths


def build_bundle_engines(request: BuildRequest) -> dict[str, Any]:
    manifest = read_manifest(request.bundle)
    paths = preflight(request, manifest)
    version = tensorrt_version()
    if int(version.split(".")[0]) < 10:
        raise RuntimeError(f"TensorRT {version} is too old: strongly typed Q/DQ builds need TensorRT >= 10")
    device = query_device()
    workspace = int(request.workspace_gb * 2**30)
    if request.target.memory_gb is None:
        print(check_memory(request, manifest, request.target.usable_bytes(device.memory_bytes)))
    engines = {}
    for name, onnx_path in zip(ENGINE_FILES, paths, strict=True):
        profile = profile_shapes(manifest, name, request.batch)
        print(f"building {ENGINE_FILES[name]} from {onnx_path.relative_to(request.bundle)} ...")
        plan = build_engine(onnx_path, profile, workspace, request.timing_cache)
        out = request.bundle / ENGINE_FILES[name]
        _write_atomically(out, plan)
        engines[name] = {
            "file": ENGINE_FILES[name],
            "sha256": sha256_file(out),
            "source": str(onnx_path.relative_to(request.bundle)),
            "source_sha256": sha256_file(onnx_path),
            "profile": {k: [list(s) for s in v] for k, v in profile.items()},
        }
    manifest["engines"] = {
        "precision": request.precision,
        "tensorrt": version,
        "gpu": device.name,
        "compute_capability": device.compute_capability,
        "target": request.target.name,
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "graphs": engines,
    }
    write_manifest(request.bundle, manifest)
    return manifest["engines"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.to_trt", description=__doc__)
    p.add_argument("bundle", type=Path)
    p.add_argument("--precision", default="fp16", choices=TRT_PRECISIONS)
    p.add_argument(
        "--batch", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"), help="default: the bundle's export range"
    )
    p.add_argument("--workspace", type=float, default=2.0, help="builder workspace in GiB (default: %(default)s)")
    p.add_argument("--timing-cache", type=Path, help="timing cache file to read and update")
    p.add_argument("--target", default="generic", choices=sorted(TARGETS))
    args = p.parse_args(argv)
    try:
        batch = args.batch or [read_manifest(args.bundle)["dims"]["batch"][k] for k in ("min", "opt", "max")]
        request = BuildRequest(
            args.bundle, args.precision, tuple(batch), args.workspace, args.timing_cache, get_target(args.target)
        )
        engines = build_bundle_engines(request)
    except TensorRTMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    files = ", ".join(e["file"] for e in engines["graphs"].values())
    print(f"built {files} with TensorRT {engines['tensorrt']} on {engines['gpu']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

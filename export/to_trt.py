"""`python -m export.to_trt BUNDLE`: build TensorRT engines from a bundle's graphs, on the machine that runs them.

Strongly typed networks on TensorRT 10.x and 11.x: precision comes from the
ONNX (fp32, mixed fp16, or int8 Q/DQ), never from builder flags (TensorRT 11
removed them). One optimisation profile per dynamic input of the graph
contract, and a reusable timing cache. On a board target (a Jetson) the
engines' memory, estimated from the graphs (export.engine_memory), is checked
before TensorRT starts; the estimate has not been compared with a real build,
so --skip-memory-check builds past its refusal. Built engines, joined into the
item pipelines, pass the parity gate against the PyTorch outputs the bundle's
gate record holds (no torch and no fp32 graphs needed on the device), under
their precision's bar, before they replace the bundle's engines and the
manifest records them; engines that miss it are not kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from agff_deploy.contract import GRAPHS, SCORER, TRT_PRECISIONS, resolved_graphs, resolved_stored
from agff_deploy.errors import AgffError, ArtifactError, InputError, MissingDependencyError, print_error
from agff_deploy.manifest import (
    EngineEntry,
    Engines,
    Manifest,
    check_external_data,
    read_manifest,
    sha256_file,
    write_manifest,
)
from runtime.cuda import query_device
from runtime.item_encoders import item_runners
from runtime.runner import Runner
from runtime.trt_runner import EngineLoader, TrtRunner

from .check import GateReport, compare
from .gate_reference import load_gate_reference
from .targets import TARGETS, Target, get_target
from .trt_lint import lint_file
from .trt_profiles import ENGINE_FILES, Profile, profile_shapes

NO_TENSORRT = (
    "TensorRT is not installed here. Engines are not portable across GPUs or TensorRT versions, so build them on "
    "the machine that runs them: copy the bundle there and run `python -m export.to_trt BUNDLE`. On a Jetson use "
    "JetPack's TensorRT (python3-libnvinfer); on an x86 GPU host `pip install 'agff-deploy[gpu]'`."
)


MEMORY_CHECK_SKIPPED = (
    "warning: --skip-memory-check: the engines' device memory was not estimated (export.engine_memory); "
    "the build may run out of memory"
)


class TensorRTMissing(MissingDependencyError):
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


def build_engine(onnx_path: Path, profile: Profile, workspace_bytes: int, cache_path: Path | None) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT could not parse {onnx_path}: {errors}")
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
        raise ArtifactError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
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
    skip_memory_check: bool = False  # build even where export.engine_memory's estimate says it will not fit


@dataclass(frozen=True)
class EngineBuild:
    """Engines built and gated: recorded in the manifest (and in the bundle) only when `report.passed`."""

    engines: Engines
    report: GateReport


def check_memory(request: BuildRequest, manifest: Manifest, usable: int) -> str:
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
    raise InputError(
        f"too large: {message}. Would fit: {advice}. The estimate has not been compared with a real build: "
        "--skip-memory-check builds anyway"
    )


def preflight(request: BuildRequest, manifest: Manifest) -> list[Path]:
    """Everything that can be checked without TensorRT: precision, opset, lint, and memory on a target that fixes
    its memory (a Jetson board). Returns the graphs to build."""
    target, precision = request.target, request.precision
    if precision not in TRT_PRECISIONS or precision not in target.precisions:
        raise InputError(
            f"--precision {precision} cannot build for {target.name}; choose {', '.join(target.precisions)}"
        )
    lo, opt, hi = request.batch
    bundle_batch = manifest.dims.batch
    if not bundle_batch.min <= lo <= opt <= hi <= bundle_batch.max:
        raise InputError(
            f"--batch {lo} {opt} {hi} must lie within the bundle's exported batch range "
            f"{bundle_batch.min}..{bundle_batch.max}; re-export with --batch to widen it"
        )
    entries = [manifest.graph(precision, name) for name in ENGINE_FILES]
    for entry in entries:
        check_external_data(request.bundle, entry)
    paths = [request.bundle / entry.file for entry in entries]
    for path in paths:
        problems = lint_file(path, target)
        if problems:
            raise ArtifactError(f"{path} will not build for {target.name}: {'; '.join(problems)}")
    if request.skip_memory_check:
        print(MEMORY_CHECK_SKIPPED, file=sys.stderr)
    elif target.memory_gb is not None:
        print(check_memory(request, manifest, target.usable_bytes()))
    return paths


def build_bundle_engines(request: BuildRequest) -> EngineBuild:
    """Build the engines of one precision, gate them, and only if they pass put them in place and record them."""
    manifest = read_manifest(request.bundle)
    paths = preflight(request, manifest)
    version = tensorrt_version()
    if int(version.split(".")[0]) < 10:
        raise MissingDependencyError(f"TensorRT {version} is too old: strongly typed Q/DQ builds need TensorRT >= 10")
    device = query_device()
    workspace = int(request.workspace_gb * 2**30)
    if request.target.memory_gb is None and not request.skip_memory_check:
        print(check_memory(request, manifest, request.target.usable_bytes(device.memory_bytes)))
    plans: dict[str, Path] = {}  # built plans under temporary names until the gate passes them
    try:
        entries = {}
        for name, onnx_path in zip(ENGINE_FILES, paths, strict=True):
            print(f"building {ENGINE_FILES[name]} from {onnx_path.relative_to(request.bundle)} ...")
            plan = build_engine(
                onnx_path, profile_shapes(manifest, name, request.batch), workspace, request.timing_cache
            )
            plans[name] = request.bundle / f".{ENGINE_FILES[name]}.tmp-{os.getpid()}"
            plans[name].write_bytes(plan)
            source = str(onnx_path.relative_to(request.bundle))
            entries[name] = EngineEntry(ENGINE_FILES[name], sha256_file(plans[name]), source, sha256_file(onnx_path))
        engines = Engines(request.precision, version, device.name, entries)
        print("parity gate: the engines against the PyTorch outputs recorded at export ...")
        report = gate_engines(request, manifest, engines, plans)
        if report.passed:
            for name, plan_path in plans.items():
                plan_path.replace(request.bundle / ENGINE_FILES[name])
            write_manifest(request.bundle, dataclasses.replace(manifest, engines=engines))
        return EngineBuild(engines, report)
    finally:
        for plan_path in plans.values():
            plan_path.unlink(missing_ok=True)


def gate_engines(request: BuildRequest, manifest: Manifest, engines: Engines, plans: dict[str, Path]) -> GateReport:
    """The engines in `plans` (stored graph -> plan file), joined into the item pipelines, against the PyTorch
    outputs of the bundle's gate record: parity with PyTorch on the device itself."""
    pipelines = resolved_graphs(manifest.sizes())
    reference, input_sets = load_gate_reference(request.bundle, manifest.gate, pipelines, manifest.fusion)
    specs = resolved_stored(manifest.sizes())
    stored: dict[str, Runner] = {
        name: TrtRunner(EngineLoader(path, engines, engines.graphs[name].sha256), specs[name])
        for name, path in plans.items()
    }
    candidates = item_runners(stored, pipelines)
    bars = {name: GRAPHS[name].bars["fp32" if name == SCORER.name else engines.precision] for name in candidates}
    return GateReport(compare(reference, candidates, input_sets, bars, engines.precision), {})


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
    p.add_argument(
        "--skip-memory-check",
        action="store_true",
        help="build even where export.engine_memory's estimate (not yet compared with a real build) says the engines "
        "will not fit",
    )
    args = p.parse_args(argv)
    try:
        batch = args.batch or read_manifest(args.bundle).dims.batch.as_tuple()
        request = BuildRequest(
            args.bundle,
            args.precision,
            tuple(batch),
            args.workspace,
            args.timing_cache,
            get_target(args.target),
            args.skip_memory_check,
        )
        build = build_bundle_engines(request)
    except TensorRTMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (AgffError, OSError) as err:
        return print_error(err)
    print(build.report.table())
    engines = build.engines
    if not build.report.passed:
        failures = "; ".join(build.report.failures(engines.precision))
        print(
            f"error: parity gate FAILED for the {engines.precision} engines: {failures}; "
            f"not kept, the manifest is unchanged",
            file=sys.stderr,
        )
        return 1
    files = ", ".join(e.file for e in engines.graphs.values())
    print(f"built {files} with TensorRT {engines.tensorrt} on {engines.gpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

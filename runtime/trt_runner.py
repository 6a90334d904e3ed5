"""TensorRT backend: a serialized plan, name-based tensor I/O and `execute_async_v3`, memory via cuda-python.

`EngineLoader` opens a plan after the checks the manifest allows: engines are
not portable, so one built by another TensorRT version or on another GPU is
refused with the command that rebuilds it, as is a plan whose bytes changed.
`TrtRunner` runs what the loader opened: it refuses an engine whose tensors
are not the contract's (it never casts a feed), splits batches over the
optimisation profile's maximum, and refuses other dimensions outside it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agff_deploy.contract import BATCH_DIMS, Feed, GraphSpec
from agff_deploy.errors import ArtifactError, InputError, MissingDependencyError, MissingFileError
from agff_deploy.manifest import Engines

from .cuda import DeviceBuffer, check, cudart, query_device
from .runner import ArtifactMismatch, Outputs, Runner, verify_sha256

if TYPE_CHECKING:
    import tensorrt as trt

REBUILD = "python -m export.to_trt BUNDLE"
Range = tuple[tuple[int, ...], tuple[int, ...]]  # an input's (min, max) shape in the engine's profile


def check_engine_origin(engines: Engines, trt_version: str, gpu: str) -> None:
    """Refuse a plan built by another TensorRT version or on another GPU model."""
    if engines.tensorrt != trt_version:
        raise ArtifactMismatch(
            f"engine was built with TensorRT {engines.tensorrt}, this host has {trt_version}; rebuild with `{REBUILD}`"
        )
    if engines.gpu != gpu:
        raise ArtifactMismatch(f"engine was built for {engines.gpu}, this host has {gpu}; rebuild with `{REBUILD}`")


class EngineLoader:
    """Deserializes one plan, after checking where it was built and that it is the file its manifest names."""

    def __init__(self, plan: str | Path, engines: Engines, expected_sha256: str | None = None) -> None:
        self.plan = Path(plan)
        self.engines = engines
        self.expected_sha256 = expected_sha256
        self.trt_runtime: trt.Runtime | None = None  # must outlive the engines it deserialized

    def __call__(self) -> trt.ICudaEngine:
        trt = _tensorrt()
        if not self.plan.is_file():
            raise MissingFileError(f"TensorRT plan {self.plan} not found; build it with `{REBUILD}`")
        check_engine_origin(self.engines, trt.__version__, query_device().name)
        verify_sha256(self.plan, self.expected_sha256, REBUILD)
        self.trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = self.trt_runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {self.plan}; rebuild it with `{REBUILD}`")
        return engine


class TrtRunner(Runner):
    name = "tensorrt"

    def __init__(self, load_engine: Callable[[], trt.ICudaEngine], spec: GraphSpec) -> None:
        super().__init__(spec)
        self.load_engine = load_engine
        self.engine: trt.ICudaEngine | None = None
        self.context: trt.IExecutionContext | None = None
        self.stream: Any = None
        self.buffers: dict[str, DeviceBuffer] = {}
        self.profile: dict[str, Range] = {}

    def activate_impl(self) -> None:
        engine = self.load_engine()
        self._check_tensors(engine)
        self.profile = {}
        for tensor in self.spec.inputs:
            low, _, high = engine.get_tensor_profile_shape(tensor.name, 0)
            self.profile[tensor.name] = (_shape(low), _shape(high))
        self.limits = self._batch_limits()
        self.engine, self.context = engine, engine.create_execution_context()
        self.stream = check(cudart().cudaStreamCreate())
        self.buffers = {name: DeviceBuffer() for name in (*self.spec.input_names, *self.spec.output_names)}

    def _check_tensors(self, engine: trt.ICudaEngine) -> None:
        """The engine's inputs and outputs are the contract's, with its dtypes, or the plan is refused."""
        import tensorrt as trt

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        found = {
            n: (engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT, np.dtype(trt.nptype(engine.get_tensor_dtype(n))))
            for n in names
        }
        wanted = {t.name: (True, np.dtype(t.dtype)) for t in self.spec.inputs}
        wanted |= {t.name: (False, np.dtype(t.dtype)) for t in self.spec.outputs}
        if found != wanted:
            describe = lambda io: ", ".join(  # noqa: E731
                f"{'input' if is_input else 'output'} {n} {dtype}" for n, (is_input, dtype) in sorted(io.items())
            )
            raise ArtifactMismatch(
                f"the {self.spec.name} engine has {describe(found)}; the contract says {describe(wanted)}: "
                f"rebuild it with `{REBUILD}`"
            )

    def _batch_limits(self) -> dict[str, int]:
        """The largest size of each batch dimension every input's profile allows."""
        limits: dict[str, int] = {}
        for tensor in self.spec.inputs:
            _, high = self.profile[tensor.name]
            for axis, dim in enumerate(tensor.shape):
                if dim in BATCH_DIMS:
                    limits[str(dim)] = min(limits.get(str(dim), high[axis]), high[axis])
        return limits

    def deactivate_impl(self) -> None:
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers = {}
        if self.stream is not None:
            check(cudart().cudaStreamDestroy(self.stream))
            self.stream = None
        self.context = self.engine = None

    def infer_impl(self, feed: Feed) -> Outputs:
        context = self.context
        assert context is not None, "activate() first"
        runtime = cudart()
        h2d = runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = {}
        for name in self.spec.input_names:
            host = hosts[name] = np.ascontiguousarray(feed[name])
            self._check_profile(name, host.shape)
            if not context.set_input_shape(name, tuple(host.shape)):
                raise RuntimeError(f"TensorRT refused shape {tuple(host.shape)} for {name} of {self.spec.name}")
            ptr = self.buffers[name].ensure(host.nbytes)
            check(runtime.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self.stream))
            context.set_tensor_address(name, ptr)
        results = {}
        for tensor in self.spec.outputs:
            out = results[tensor.name] = np.empty(_shape(context.get_tensor_shape(tensor.name)), dtype=tensor.dtype)
            context.set_tensor_address(tensor.name, self.buffers[tensor.name].ensure(out.nbytes))
        if not context.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT execution of the {self.spec.name} engine failed")
        for name, out in results.items():
            check(runtime.cudaMemcpyAsync(out.ctypes.data, self.buffers[name].ptr, out.nbytes, d2h, self.stream))
        check(runtime.cudaStreamSynchronize(self.stream))
        return results

    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        """A shape outside the profile (a text longer than the engine was built for) is refused by name."""
        low, high = self.profile[name]
        if not all(lo <= size <= hi for lo, size, hi in zip(low, shape, high, strict=True)):
            raise InputError(
                f"{self.spec.name}: {name} of shape {shape} is outside the engine's profile {low}..{high}; "
                f"rebuild with `{REBUILD} --batch ...` within the bundle's exported range"
            )


def _shape(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(dims[i] for i in range(len(dims)))


def _tensorrt() -> Any:
    """The TensorRT module, or one `error:` line that says what to install (a stubs-only package counts as none)."""
    missing = MissingDependencyError(
        "TensorRT is not installed: install the `gpu` extra (pip install -e '.[gpu]'; on Jetson use JetPack's "
        "TensorRT), or run the bundle's ONNX graphs with --backend onnxruntime"
    )
    try:
        import tensorrt
    except ImportError as err:
        raise missing from err
    if not hasattr(tensorrt, "Runtime"):
        raise missing
    return tensorrt

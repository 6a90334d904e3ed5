"""TensorRT backend: a serialized plan, name-based tensor I/O and `execute_async_v3`, memory via cuda-python.

The manifest says which TensorRT version and GPU built the plan; engines are
not portable, so a mismatch is refused with the command that rebuilds it.
Batches over the optimisation profile's maximum are split and rejoined.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tensorrt as trt

from .runner import ArtifactMismatch, Feeds, Runner, verify_sha256

REBUILD = "python -m export.to_trt BUNDLE"


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


def _check(result: Any) -> Any:
    """cuda-python returns (error, *values): raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


def current_gpu() -> str:
    props = _check(_cudart().cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00")


def check_engine_origin(built: dict[str, Any], trt_version: str, gpu: str) -> None:
    """Refuse a plan built by another TensorRT version or on another GPU model."""
    if built.get("tensorrt") != trt_version:
        raise ArtifactMismatch(
            f"engine was built with TensorRT {built.get('tensorrt')}, this host has {trt_version}; "
            f"rebuild with `{REBUILD}`"
        )
    if built.get("gpu") != gpu:
        raise ArtifactMismatch(
            f"engine was built for {built.get('gpu')}, this host has {gpu}; rebuild with `{REBUILD}`"
        )


class _DeviceBuffer:
    def __init__(self) -> None:
        self.ptr, self.size = 0, 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.size:
            self.free()
            self.ptr, self.size = int(_check(_cudart().cudaMalloc(max(nbytes, 1)))), nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            _check(_cudart().cudaFree(self.ptr))
        self.ptr, self.size = 0, 0


class TrtRunner(Runner):
    name = "tensorrt"

    def __init__(self, plan: str | Path, built: dict[str, Any], expected_sha256: str | None = None) -> None:
        super().__init__()
        self.plan = Path(plan)
        self.built = built
        self.expected_sha256 = expected_sha256
        self.buffers: dict[str, _DeviceBuffer] = {}
        self.engine: trt.ICudaEngine | None = None
        self.context: trt.IExecutionContext | None = None
        self.stream: Any = None

    def activate(self) -> None:
        import tensorrt as trt

        if not self.plan.is_file():
            raise FileNotFoundError(f"TensorRT plan {self.plan} not found; build it with `{REBUILD}`")
        check_engine_origin(self.built, trt.__version__, current_gpu())
        verify_sha256(self.plan, self.expected_sha256, REBUILD)
        self.trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = self.trt_runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.plan}; rebuild it with `{REBUILD}`")
        self.engine, self.context = engine, engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.max_batch = int(engine.get_tensor_profile_shape(self.inputs[0], 0)[2][0])
        self.stream = _check(_cudart().cudaStreamCreate())
        self.buffers = {n: _DeviceBuffer() for n in names}
        super().activate()

    def deactivate(self) -> None:
        for buffer in self.buffers.values():
            buffer.free()
        if self.stream is not None:
            _check(_cudart().cudaStreamDestroy(self.stream))
            self.stream = None
        self.context = self.engine = None
        super().deactivate()

    def infer(self, feeds: Feeds) -> Feeds:
        context = self.context
        assert context is not None, "activate() first"
        cudart = _cudart()
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = {}
        for name in self.inputs:
            host = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            hosts[name] = host
            context.set_input_shape(name, tuple(host.shape))
            ptr = self.buffers[name].ensure(host.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self.stream))
            context.set_tensor_address(name, ptr)
        results = {}
        for name in self.outputs:
            dims = context.get_tensor_shape(name)
            results[name] = np.empty([dims[i] for i in range(len(dims))], dtype=self.dtypes[name])
            context.set_tensor_address(name, self.buffers[name].ensure(results[name].nbytes))
        if not context.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT execution of {self.plan} failed")
        for name, out in results.items():
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[name].ptr, out.nbytes, d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return results

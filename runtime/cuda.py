"""The few CUDA runtime calls TensorRT needs from us, through cuda-python: device properties and device memory.

Imported only where TensorRT runs; cuda-python returns `(error, *values)`
from every call, and `check` turns a non-zero error into an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agff_deploy.errors import MissingDependencyError


def cudart() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6
        except ImportError as err:
            raise MissingDependencyError(
                "cuda-python is not installed: TensorRT engines need the `gpu` extra (pip install -e '.[gpu]'); "
                "or run the bundle's ONNX graphs with --backend onnxruntime"
            ) from err
    return runtime


def check(result: Any) -> Any:
    """cuda-python returns (error, *values): raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    memory_bytes: int


def query_device(index: int = 0) -> DeviceInfo:
    """Name and memory of a CUDA device."""
    try:
        props = check(cudart().cudaGetDeviceProperties(index))
    except RuntimeError as err:
        raise MissingDependencyError(
            f"no usable CUDA device {index} ({err}): TensorRT engines need an NVIDIA GPU; "
            "run the bundle's ONNX graphs with --backend onnxruntime instead"
        ) from err
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(name.rstrip("\x00"), int(props.totalGlobalMem))


class DeviceBuffer:
    """One device allocation, grown (never shrunk) to the largest size asked for."""

    def __init__(self) -> None:
        self.ptr, self.size = 0, 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.size:
            self.free()
            self.ptr, self.size = int(check(cudart().cudaMalloc(max(nbytes, 1)))), nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr))
        self.ptr, self.size = 0, 0

"""Test doubles for TensorRT and cuda-python: the calls our builder and runner make, and nothing more.

`install(monkeypatch)` puts a fake `tensorrt` module and a fake `cuda.bindings.runtime` in `sys.modules`.
The fake parser refuses a graph that onnx cannot load or its checker rejects. A fake build serializes the ONNX
path it parsed and the optimisation profile it was given; a fake engine runs that graph in ONNX Runtime (times
`Build.scale`, to make a bad engine), holds its profile and enforces it as TensorRT does. Device memory is host
memory behind integer handles, copied with ctypes, so the runner's buffers, copies and streams run for real; what
stays untested is TensorRT itself.
"""

from __future__ import annotations

import ctypes
import json
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VERSION = "10.3.0"
GPU = "Fake GPU"
ORT_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(int64)": np.dtype(np.int64)}

Compute = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class Build:
    """What fake builds write into their plans."""

    scale = 1.0  # engine outputs are the graph's times this: 1.0 is a faithful engine


@dataclass
class Memory:
    """Device memory and streams: what is allocated now, and counts of every call that matters."""

    blocks: dict[int, bytearray] = field(default_factory=dict)
    streams: set[int] = field(default_factory=set)
    next_handle: int = 1
    streams_created: int = 0

    def handle(self) -> int:
        self.next_handle += 1
        return self.next_handle


class IOMode:
    INPUT = "input"
    OUTPUT = "output"


@dataclass
class FakeEngine:
    inputs: dict[str, np.dtype]
    outputs: dict[str, np.dtype]
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    compute: Compute

    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, index: int) -> str:
        return [*self.inputs, *self.outputs][index]

    def get_tensor_mode(self, name: str) -> str:
        return IOMode.INPUT if name in self.inputs else IOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> np.dtype:
        return {**self.inputs, **self.outputs}[name]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return list(self.profile[name])

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.calls: list[dict[str, tuple[int, ...]]] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self.engine.profile[name]
        if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def _inputs(self) -> dict[str, np.ndarray]:
        blocks = MEMORY.blocks
        return {
            name: np.frombuffer(bytes(blocks[self.addresses[name]]), dtype)[: int(np.prod(self.shapes[name]))].reshape(
                self.shapes[name]
            )
            for name, dtype in self.engine.inputs.items()
        }

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.engine.compute(self._inputs())[name].shape

    def execute_async_v3(self, stream: int) -> bool:
        assert stream in MEMORY.streams
        self.calls.append(dict(self.shapes))
        for name, value in self.engine.compute(self._inputs()).items():
            data = np.ascontiguousarray(value, self.engine.outputs[name]).tobytes()
            MEMORY.blocks[self.addresses[name]][: len(data)] = data
        return True


class Runtime:
    def __init__(self, logger: object) -> None:
        pass

    def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine:
        return engine_from_plan(plan)


def engine_from_plan(plan: bytes) -> FakeEngine:
    """The engine a fake build made: the parsed graph in ONNX Runtime, scaled, with the build's profile."""
    import onnxruntime

    record = json.loads(plan)
    session = onnxruntime.InferenceSession(record["onnx"], providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def compute(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: v * record["scale"] for n, v in zip(names, session.run(names, feeds), strict=True)}

    profile = {name: tuple(tuple(s) for s in shapes) for name, shapes in record["profile"].items()}
    return FakeEngine(
        {i.name: ORT_DTYPES[i.type] for i in session.get_inputs()},
        {o.name: ORT_DTYPES[o.type] for o in session.get_outputs()},
        profile,
        compute,
    )


class Logger:
    WARNING = 2

    def __init__(self, severity: int = 2) -> None:
        pass


class Network:
    onnx = ""


class ParserError:
    """One entry of a failed parse, as `OnnxParser.get_error` returns it: a description and its text."""

    def __init__(self, description: str) -> None:
        self.description = description

    def desc(self) -> str:
        return self.description

    def __str__(self) -> str:
        return self.description


class OnnxParser:
    """Parses as TensorRT's parser must at least: a file onnx cannot load, or a graph onnx's checker rejects (a node
    reading a tensor nothing produces, say), fails with its errors recorded and the network left empty."""

    def __init__(self, network: Network, logger: Logger) -> None:
        self.network = network
        self.errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> ParserError:
        return self.errors[index]

    def parse_from_file(self, path: str) -> bool:
        import onnx
        from google.protobuf.message import DecodeError

        try:
            onnx.checker.check_model(onnx.load(path, load_external_data=False))
        except (DecodeError, onnx.checker.ValidationError) as err:
            self.errors.append(ParserError(f"{type(err).__name__}: {str(err).strip()}"))
            return False
        self.network.onnx = path
        return True


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, low: tuple[int, ...], opt: tuple[int, ...], high: tuple[int, ...]) -> None:
        self.shapes[name] = [list(low), list(opt), list(high)]


class TimingCache:
    def serialize(self) -> bytes:
        return b"fake timing cache"


class BuilderConfig:
    def __init__(self) -> None:
        self.profiles: list[OptimizationProfile] = []

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        pass

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self.profiles.append(profile)
        return 0

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache()

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        return True


class Builder:
    def __init__(self, logger: Logger) -> None:
        pass

    def create_network(self, flags: int) -> Network:
        return Network()

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
        (profile,) = config.profiles
        return json.dumps({"onnx": network.onnx, "profile": profile.shapes, "scale": Build.scale}).encode()


def _tensorrt() -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSION
    trt.Logger = Logger
    trt.Runtime = Runtime
    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    trt.TensorIOMode = IOMode
    trt.nptype = lambda dtype: np.dtype(dtype).type
    trt.Dims = tuple
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    return trt


MEMORY = Memory()


def _cudart() -> types.ModuleType:
    runtime = types.ModuleType("cuda.bindings.runtime")
    runtime.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h")

    def malloc(size: int) -> tuple[int, int]:
        handle = MEMORY.handle()
        MEMORY.blocks[handle] = bytearray(size)
        return 0, handle

    def free(handle: int) -> tuple[int]:
        del MEMORY.blocks[handle]
        return (0,)

    def memcpy(dst: int, src: int, size: int, kind: str, stream: int) -> tuple[int]:
        assert stream in MEMORY.streams
        if kind == "h2d":
            MEMORY.blocks[dst][:size] = ctypes.string_at(src, size)
        else:
            ctypes.memmove(dst, bytes(MEMORY.blocks[src][:size]), size)
        return (0,)

    def stream_create() -> tuple[int, int]:
        handle = MEMORY.handle()
        MEMORY.streams.add(handle)
        MEMORY.streams_created += 1
        return 0, handle

    def stream_destroy(stream: int) -> tuple[int]:
        MEMORY.streams.remove(stream)
        return (0,)

    properties = types.SimpleNamespace(name=GPU.encode(), totalGlobalMem=8 << 30)
    runtime.cudaMalloc = malloc
    runtime.cudaFree = free
    runtime.cudaMemcpyAsync = memcpy
    runtime.cudaStreamCreate = stream_create
    runtime.cudaStreamDestroy = stream_destroy
    runtime.cudaStreamSynchronize = lambda stream: (0,)
    runtime.cudaGetDeviceProperties = lambda index: (0, properties)
    runtime.cudaGetDeviceCount = lambda: (0, 1)
    return runtime


def install(monkeypatch) -> Memory:
    """Fake TensorRT and cuda-python for the rest of a test; returns the (emptied) fake device memory."""
    global MEMORY
    MEMORY = Memory()
    runtime = _cudart()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in {
        "tensorrt": _tensorrt(),
        "cuda": cuda,
        "cuda.bindings": bindings,
        "cuda.bindings.runtime": runtime,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(Build, "scale", 1.0)
    return MEMORY


def plan_for(onnx: Path, profile: dict[str, list[list[int]]], scale: float = 1.0) -> bytes:
    """A plan as a fake build writes it, for tests that skip the builder."""
    return json.dumps({"onnx": str(onnx), "profile": profile, "scale": scale}).encode()

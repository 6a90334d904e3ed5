"""Deployment targets: what TensorRT version each ships, what its ONNX parser reads, and how much memory it has.

Engines are not portable: build on the target. JetPack 6.1/6.2 ship TensorRT
10.3; JetPack 7.x ships 10.13+. Every 10.x parser reads opsets 9..20 (10.0's
documented range; later 10.x read more), so all targets are held to that.

Jetson Orin memory is unified: CPU and GPU share the board's DRAM, so engines
get what the board has minus what the system keeps. That reserve is an
assumption, not a measurement: about 2 GiB on JetPack 6 for the firmware
carve-outs, a headless Ubuntu, the CUDA context and the TensorRT, cuBLAS and
cuDNN libraries once loaded. A desktop session or other services take more;
measure with `tegrastats` on the board and lower the batch if it is tight.
"""

from __future__ import annotations

from dataclasses import dataclass

from agff_deploy.contract import TRT_PRECISIONS
from agff_deploy.errors import InputError

JETPACK_RESERVE_GB = 2.0
# On a discrete GPU the OS lives in host memory; the CUDA context and TensorRT's kernels still take device memory.
DISCRETE_RESERVE_GB = 1.0


@dataclass(frozen=True)
class Target:
    """`memory_gb` is the board's memory in GiB (None: ask the device); `reserve_gb` is kept back for the system."""

    name: str
    description: str
    tensorrt: str
    opset_min: int
    opset_max: int
    precisions: tuple[str, ...]
    memory_gb: float | None
    reserve_gb: float

    def check_opset(self, opset: int) -> str | None:
        if not self.opset_min <= opset <= self.opset_max:
            return f"opset {opset} is outside {self.name}'s parser range {self.opset_min}..{self.opset_max}"
        return None

    def usable_bytes(self, device_bytes: int | None = None) -> int:
        """Bytes engines may take: the board's memory, or `device_bytes` where the target does not fix it, less
        the reserve."""
        total = self.memory_gb * 2**30 if self.memory_gb is not None else device_bytes
        if total is None:
            raise ValueError(f"{self.name} does not fix its memory: pass the device's")
        return int(total - self.reserve_gb * 2**30)


def _orin(name: str, module: str, memory_gb: float) -> Target:
    description = f"Jetson {module} {memory_gb:g} GB on JetPack 6.1/6.2 (TensorRT 10.3)"
    return Target(name, description, "10.3", 9, 20, TRT_PRECISIONS, memory_gb, JETPACK_RESERVE_GB)


ORIN_BOARDS = (
    _orin("orin-nano-8gb", "Orin Nano", 8.0),
    _orin("orin-nx-16gb", "Orin NX", 16.0),
    _orin("agx-orin-32gb", "AGX Orin", 32.0),
    _orin("agx-orin-64gb", "AGX Orin", 64.0),
)
TARGETS = {
    "generic": Target(
        "generic", "any NVIDIA GPU with TensorRT 10.x or 11.x", "10.0", 9, 20, TRT_PRECISIONS, None, DISCRETE_RESERVE_GB
    ),
    # The smallest Orin (8 GB) under the names older scripts use; JetPack 7 is assumed to keep back as much as 6.
    "jetson-orin-jp6": Target(
        "jetson-orin-jp6",
        "Jetson Orin on JetPack 6.1/6.2 (TensorRT 10.3)",
        "10.3",
        9,
        20,
        TRT_PRECISIONS,
        8.0,
        JETPACK_RESERVE_GB,
    ),
    "jetson-orin-jp7": Target(
        "jetson-orin-jp7",
        "Jetson Orin on JetPack 7.x (TensorRT 10.13+)",
        "10.13",
        9,
        20,
        TRT_PRECISIONS,
        8.0,
        JETPACK_RESERVE_GB,
    ),
    **{board.name: board for board in ORIN_BOARDS},
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise InputError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")
    return TARGETS[name]

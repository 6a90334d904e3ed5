"""Deployment targets: what TensorRT version each ships and what its ONNX parser reads.

Engines are not portable: build on the target. JetPack 6.1/6.2 ship TensorRT
10.3; JetPack 7.x ships 10.13+. Every 10.x parser reads opsets 9..20 (10.0's
documented range; later 10.x read more), so all targets are held to that.
"""

from __future__ import annotations

from dataclasses import dataclass

from agff_deploy.manifest import TRT_PRECISIONS


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    tensorrt: str
    opset_min: int
    opset_max: int
    precisions: tuple[str, ...]
    memory_gb: float | None

    def check_opset(self, opset: int) -> str | None:
        if not self.opset_min <= opset <= self.opset_max:
            return f"opset {opset} is outside {self.name}'s parser range {self.opset_min}..{self.opset_max}"
        return None


TARGETS = {
    "generic": Target("generic", "any NVIDIA GPU with TensorRT 10.x or 11.x", "10.0", 9, 20, TRT_PRECISIONS, None),
    "jetson-orin-jp6": Target(
        "jetson-orin-jp6", "Jetson Orin on JetPack 6.1/6.2 (TensorRT 10.3)", "10.3", 9, 20, TRT_PRECISIONS, 8.0
    ),
    "jetson-orin-jp7": Target(
        "jetson-orin-jp7", "Jetson Orin on JetPack 7.x (TensorRT 10.13+)", "10.13", 9, 20, TRT_PRECISIONS, 8.0
    ),
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")
    return TARGETS[name]

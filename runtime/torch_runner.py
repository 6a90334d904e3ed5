"""PyTorch backend: the checkpoint itself, for parity checks and for users without an export.

torch is imported only when this runner is built, so `runtime` stays importable without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agff_deploy.contract import (
    ATTENTION_MASK,
    CANDIDATES,
    IMAGE_GRID,
    INPUT_IDS,
    PIXEL_VALUES,
    QUERIES,
    SCORER,
    Feed,
    GraphSpec,
)

from .runner import Outputs, Runner


class TorchRunner(Runner):
    """Runs one graph's worth of the model (`spec` names which), the way the exported graph computes it."""

    name = "pytorch"

    def __init__(self, model: Any, spec: GraphSpec, device: str | None = None) -> None:
        super().__init__(spec)
        import torch

        self.torch = torch
        self.model = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._saved_tf32: tuple[bool, bool] | None = None

    def activate_impl(self) -> None:
        if self.device.startswith("cuda"):
            # True fp32 on the GPU: this runner is the parity reference, and TF32 convolutions drift by ~1e-3.
            # The flags are process-wide, so deactivate_impl puts back what it found.
            backends = self.torch.backends
            self._saved_tf32 = (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
            backends.cudnn.allow_tf32 = False
            backends.cuda.matmul.allow_tf32 = False
        self.model.to(self.device).eval()

    def deactivate_impl(self) -> None:
        if self._saved_tf32 is not None:
            backends = self.torch.backends
            backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = self._saved_tf32
            self._saved_tf32 = None

    def infer_impl(self, feed: Feed) -> Outputs:
        torch = self.torch
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feed.items()}
        with torch.inference_mode():
            if self.spec.name == SCORER.name:
                out = self.model.similarity(tensors[QUERIES.name], tensors[CANDIDATES.name])
            else:
                pixels, grid = tensors.get(PIXEL_VALUES.name), tensors.get(IMAGE_GRID.name)
                out = self.model(tensors[INPUT_IDS.name], tensors[ATTENTION_MASK.name], pixels, grid)
        return {self.spec.output: out.float().cpu().numpy()}

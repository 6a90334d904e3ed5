"""PyTorch backend: the checkpoint itself, for parity checks and for users without an export.

torch is imported only when this runner is built, so `runtime` stays importable without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .runner import Feeds, Runner


class TorchRunner(Runner):
    """Runs one graph's worth of the model: `image_encoder`, `text_encoder` or `scorer`."""

    name = "pytorch"

    def __init__(self, model, graph: str, device: str | None = None) -> None:
        super().__init__()
        import torch

        self.torch = torch
        self.model = model
        self.graph = graph
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    @classmethod
    def from_checkpoint(cls, folder: str | Path, graphs: tuple[str, ...], image_size=None) -> dict[str, TorchRunner]:
        from agff_deploy.checkpoint import load_checkpoint

        model, _ = load_checkpoint(folder, image_size=image_size)
        return {graph: cls(model, graph) for graph in graphs}

    def activate(self) -> None:
        if self.device.startswith("cuda"):
            # True fp32 on the GPU: this runner is the parity reference, and TF32 convolutions drift by ~1e-3.
            self.torch.backends.cudnn.allow_tf32 = False
            self.torch.backends.cuda.matmul.allow_tf32 = False
        self.model.to(self.device).eval()
        super().activate()

    def infer(self, feeds: Feeds) -> Feeds:
        torch = self.torch
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feeds.items()}
        with torch.inference_mode():
            if self.graph == "scorer":
                return {
                    "scores": self.model.similarity(tensors["queries"], tensors["candidates"]).float().cpu().numpy()
                }
            out = self.model(tensors["input_ids"], tensors["attention_mask"], tensors.get("pixel_values"))
        return {"embeddings": out.float().cpu().numpy()}

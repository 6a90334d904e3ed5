"""agff-serve's models from Python, over HTTP or gRPC (tritonclient underneath; any KServe v2 client works too).

    with EmbeddingClient("localhost:8000") as client:                 # or ("localhost:8001", "grpc")
        images = client.embed_images([open("a.jpg", "rb").read()])    # [1, K+1, D]
        texts = client.embed_texts(["a red circle"])
        scores = client.score(images, texts)                          # [1, 1], image side first

A request the server refuses raises tritonclient's `InferenceServerException`
with the server's message (which item, what is wrong).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .request_items import CANDIDATES, EMBEDDINGS, IMAGE, INSTRUCTION, QUERIES, SCORES, TASK, TEXT

PROTOCOLS = ("http", "grpc")


def _protocol_module(protocol: str) -> ModuleType:
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    return module


def _bytes_column(items: Sequence[bytes | str]) -> np.ndarray:
    """`[n, 1]` BYTES, the layout of the served models' string inputs."""
    column = np.empty((len(items), 1), dtype=object)
    column[:, 0] = [item.encode() if isinstance(item, str) else item for item in items]
    return column


class EmbeddingClient:
    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 60.0) -> None:
        self.protocol = protocol
        self.module = _protocol_module(protocol)
        # HTTP takes its timeout per connection, gRPC per call.
        http = {"connection_timeout": timeout_s, "network_timeout": timeout_s} if protocol == "http" else {}
        self.per_call = {"client_timeout": timeout_s} if protocol == "grpc" else {}
        self.client = self.module.InferenceServerClient(url, **http)

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def _input(self, name: str, array: np.ndarray) -> Any:
        datatype = "BYTES" if array.dtype == object else {"float32": "FP32"}[array.dtype.name]
        tensor = self.module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return tensor

    def _infer(self, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        tensors = [self._input(name, array) for name, array in inputs.items()]
        return self.client.infer(model, tensors, **self.per_call).as_numpy(output)

    def embed_images(
        self,
        images: Sequence[bytes],
        instructions: Sequence[str] | None = None,
        task: str | Sequence[str] | None = None,
    ) -> np.ndarray:
        """Encoded image files (JPEG, PNG, ...) -> `[N, K+1, D]`; one instruction per image if any; a single-vector
        embedder's task instruction for all of them or one per image."""
        inputs = {IMAGE: _bytes_column(images)}
        if instructions is not None:
            inputs[INSTRUCTION] = _bytes_column(instructions)
        return self._infer("image", self._with_task(inputs, task, len(images)), EMBEDDINGS)

    def embed_texts(self, texts: Sequence[str], task: str | Sequence[str] | None = None) -> np.ndarray:
        """Texts -> `[N, K+1, D]`; a single-vector embedder's task instruction for all of them or one per text."""
        return self._infer("text", self._with_task({TEXT: _bytes_column(texts)}, task, len(texts)), EMBEDDINGS)

    @staticmethod
    def _with_task(
        inputs: dict[str, np.ndarray], task: str | Sequence[str] | None, count: int
    ) -> dict[str, np.ndarray]:
        """The task column, one per item: every input of a request batches along the same first axis."""
        if task is None:
            return inputs
        return {**inputs, TASK: _bytes_column([task] * count if isinstance(task, str) else task)}

    def score(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Fused scores `[Nq, Nc]`; put the image side first, as the model was trained."""
        inputs = {QUERIES: np.asarray(queries, np.float32), CANDIDATES: np.asarray(candidates, np.float32)}
        return self._infer("score", inputs, SCORES)

    def batch_sizes(self, model: str) -> dict[int, int]:
        """How many times the server ran `model` at each batch size (Triton's own statistics)."""
        if self.protocol == "grpc":
            stats = self.client.get_inference_statistics(model, as_json=True)
        else:
            stats = self.client.get_inference_statistics(model)
        rows = stats["model_stats"][0].get("batch_stats", [])
        return {int(row["batch_size"]): int(row["compute_infer"]["count"]) for row in rows}

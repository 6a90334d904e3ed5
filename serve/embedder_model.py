"""The Python-backend model behind agff-serve's `image`, `text` and `score` models.

Triton's dynamic batcher hands `execute` the requests it gathered. Every item
is checked and decoded on its own, the good items of the whole batch go
through the runtime's `Embedder` in one call, and each request gets its own
response: its embeddings, or an error that says what is wrong with it. One
bad image therefore never fails the requests batched with it.

`EmbeddingService` holds all of that and knows nothing of Triton, so tests and
the benchmark drive it directly; `TritonPythonModel` only moves tensors in and
out of Triton's request objects (`triton_python_backend_utils` exists only
inside Triton's Python-backend stub).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from agff_deploy.contract import IMAGE_ENCODER, TEXT_ENCODER
from agff_deploy.images import DEFAULT_MAX_PIXELS
from runtime.embedder import Embedder

from .request_items import (
    CANDIDATES,
    EMBEDDINGS,
    IMAGE,
    INSTRUCTION,
    QUERIES,
    SCORES,
    TASK,
    TEXT,
    RequestError,
    RequestItems,
)

Result = np.ndarray | RequestError
Request = TypeVar("Request")
Item = TypeVar("Item")


class EmbeddingService:
    """Per-request checks, batch-wide embedding, per-request results."""

    def __init__(self, embedder: Embedder, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.embedder = embedder
        self.items = RequestItems(embedder.formatter, embedder.preprocessor, max_pixels)

    def images(self, requests: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]) -> list[Result]:
        """Each request: encoded image files `[n, 1]` (bytes), optionally one instruction per image, and optionally
        task instructions (one for all or one per image)."""
        return self._batched(requests, self._image_items, self._embed_images)

    def texts(self, requests: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> list[Result]:
        """Each request: texts `[n, 1]` (UTF-8 bytes), and optionally task instructions (one for all or per text)."""
        return self._batched(requests, self._text_items, self._embed_texts)

    def scores(self, queries: np.ndarray, candidates: np.ndarray) -> Result:
        """Fused scores `[Nq, Nc]` of query embeddings against candidate embeddings, image side first as trained."""
        if not len(queries) or not len(candidates):
            return RequestError(f"{QUERIES} and {CANDIDATES} each need at least one embedding")
        return self.embedder.score(queries, candidates)

    def _image_items(self, request: tuple[np.ndarray, np.ndarray | None, np.ndarray | None]) -> list[tuple]:
        images, instructions, tasks = request
        pixels, prompts = self.items.images(images, instructions)
        return list(zip(pixels, prompts, self.items.tasks(tasks, len(pixels)), strict=True))

    def _embed_images(self, items: list[tuple[np.ndarray, str, str | None]]) -> np.ndarray:
        pixels, prompts, tasks = zip(*items, strict=True)
        normalize = self.embedder.preprocessor.normalize
        return self.embedder.embed_pixels([normalize(p) for p in pixels], list(prompts), list(tasks))

    def _text_items(self, request: tuple[np.ndarray, np.ndarray | None]) -> list[tuple[str, str | None]]:
        texts, tasks = request
        found = self.items.texts(texts)
        return list(zip(found, self.items.tasks(tasks, len(found)), strict=True))

    def _embed_texts(self, items: list[tuple[str, str | None]]) -> np.ndarray:
        texts, tasks = zip(*items, strict=True)
        return self.embedder.embed_texts(list(texts), task=list(tasks))

    @staticmethod
    def _batched(
        requests: Sequence[Request], read: Callable[[Request], list[Item]], embed: Callable[[list[Item]], np.ndarray]
    ) -> list[Result]:
        """`read` each request's items (or its error), `embed` the items of all good requests in one call, and
        hand each request its own rows."""
        results: list[Result] = []
        items: list[Item] = []
        owners: list[int] = []
        for r, request in enumerate(requests):
            try:
                mine = read(request)
            except RequestError as err:
                results.append(err)
                continue
            results.append(np.empty(0))
            items += mine
            owners += [r] * len(mine)
        if items:
            embeddings, owner = embed(items), np.asarray(owners)
            for r in dict.fromkeys(owners):
                results[r] = embeddings[owner == r]
        return results


class TritonPythonModel:
    """Triton's entry point; the model's `parameters` say which task it serves and which artifact it loads."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        parameters = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.task = parameters["task"]
        self.embedder = Embedder.load(
            parameters["engine"],
            backend=parameters.get("backend") or None,
            precision=parameters.get("precision") or None,
            threads=int(parameters.get("threads") or 0) or None,
        )
        graphs = {"image": [IMAGE_ENCODER.name], "text": [TEXT_ENCODER.name], "score": []}[self.task]
        self.embedder.activate(graphs)
        self.service = EmbeddingService(self.embedder, int(parameters.get("max_pixels") or 0) or DEFAULT_MAX_PIXELS)

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.task == "image":
            results = self.service.images(
                [(self._input(r, IMAGE), self._input(r, INSTRUCTION), self._input(r, TASK)) for r in requests]
            )
            return [self._response(result, EMBEDDINGS) for result in results]
        if self.task == "text":
            results = self.service.texts([(self._input(r, TEXT), self._input(r, TASK)) for r in requests])
            return [self._response(result, EMBEDDINGS) for result in results]
        return [
            self._response(self.service.scores(self._input(r, QUERIES), self._input(r, CANDIDATES)), SCORES)
            for r in requests
        ]

    def _input(self, request: Any, name: str) -> Any:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def _response(self, result: Result, output: str) -> Any:
        if isinstance(result, RequestError):
            return self.pb.InferenceResponse(error=self.pb.TritonError(str(result), self.pb.TritonError.INVALID_ARG))
        return self.pb.InferenceResponse([self.pb.Tensor(output, np.ascontiguousarray(result, np.float32))])

    def finalize(self) -> None:
        self.embedder.close()

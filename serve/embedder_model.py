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
from collections.abc import Sequence
from typing import Any

import numpy as np

from agff_deploy.contract import IMAGE_ENCODER, TEXT_ENCODER
from agff_deploy.errors import InputError
from agff_deploy.images import DEFAULT_MAX_PIXELS, ImageLoadError, decode_image_bytes
from runtime.embedder import Embedder

TASKS = ("image", "text", "score")
IMAGE, INSTRUCTION, TEXT, EMBEDDINGS = "image", "instruction", "text", "embeddings"
QUERIES, CANDIDATES, SCORES = "queries", "candidates", "scores"


class RequestError(InputError):
    """What is wrong with one request; it becomes that request's error response."""


Result = np.ndarray | RequestError


class EmbeddingService:
    """Per-request checks, batch-wide embedding, per-request results."""

    def __init__(self, embedder: Embedder, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.embedder = embedder
        self.max_pixels = max_pixels
        self.max_text_tokens = embedder.formatter.max_text_tokens

    def images(self, requests: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> list[Result]:
        """Each request: encoded image files `[n, 1]` (bytes) and optionally one instruction per image."""
        results: list[Result | None] = [None] * len(requests)
        pixels, prompts, owners = [], [], []
        for r, (images, instructions) in enumerate(requests):
            try:
                rows = [self._pixels(data, f"image {i}") for i, data in enumerate(images.reshape(-1))]
                texts = [""] * len(rows) if instructions is None else self._texts(instructions, INSTRUCTION, True)
                if len(texts) != len(rows):
                    raise RequestError(f"{len(texts)} instructions for {len(rows)} images: send one per image")
            except RequestError as err:
                results[r] = err
                continue
            pixels += rows
            prompts += texts
            owners += [r] * len(rows)
        if pixels:
            normalized = self.embedder.preprocessor.normalize(np.stack(pixels))
            self._hand_out(self.embedder.embed_pixels(normalized, prompts), owners, results)
        return _every_request_answered(results)

    def texts(self, requests: Sequence[np.ndarray]) -> list[Result]:
        """Each request: texts `[n, 1]` (UTF-8 bytes)."""
        results: list[Result | None] = [None] * len(requests)
        texts, owners = [], []
        for r, raw in enumerate(requests):
            try:
                rows = self._texts(raw, TEXT, False)
            except RequestError as err:
                results[r] = err
                continue
            texts += rows
            owners += [r] * len(rows)
        if texts:
            self._hand_out(self.embedder.embed_texts(texts), owners, results)
        return _every_request_answered(results)

    def scores(self, queries: np.ndarray, candidates: np.ndarray) -> Result:
        """Fused scores `[Nq, Nc]` of query embeddings against candidate embeddings, image side first as trained."""
        if not len(queries) or not len(candidates):
            return RequestError(f"{QUERIES} and {CANDIDATES} each need at least one embedding")
        return self.embedder.score(queries, candidates)

    @staticmethod
    def _hand_out(embeddings: np.ndarray, owners: list[int], results: list[Result | None]) -> None:
        """Split the batch's embeddings back into the requests they came from, in order."""
        for r in dict.fromkeys(owners):
            results[r] = embeddings[np.asarray(owners) == r]

    def _pixels(self, data: object, name: str) -> np.ndarray:
        if not isinstance(data, bytes):
            raise RequestError(f"{name} must be the bytes of an encoded image file (BYTES)")
        try:
            image, _ = decode_image_bytes(data, name, self.max_pixels)
        except ImageLoadError as err:
            raise RequestError(str(err)) from err
        return self.embedder.preprocessor.resize(image)

    def _texts(self, raw: np.ndarray, what: str, allow_empty: bool) -> list[str]:
        texts = []
        for i, item in enumerate(raw.reshape(-1)):
            name = f"{what} {i}"
            try:
                text = item.decode("utf-8") if isinstance(item, bytes) else None
            except UnicodeDecodeError as err:
                raise RequestError(f"{name} is not UTF-8 ({err.reason} at byte {err.start})") from err
            if text is None:
                raise RequestError(f"{name} must be UTF-8 text (BYTES)")
            if not allow_empty and not text.strip():
                raise RequestError(f"{name} is empty: send the text to embed")
            tokens = len(self.embedder.formatter.text_ids(text))
            if tokens > self.max_text_tokens:
                raise RequestError(
                    f"{name} is {tokens} tokens, over the model's {self.max_text_tokens}: shorten it "
                    "(the server does not truncate silently)"
                )
            texts.append(text)
        return texts


def _every_request_answered(results: list[Result | None]) -> list[Result]:
    return [RequestError("the request holds no items") if r is None else r for r in results]


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
            results = self.service.images([(self._input(r, IMAGE), self._input(r, INSTRUCTION)) for r in requests])
            return [self._response(result, EMBEDDINGS) for result in results]
        if self.task == "text":
            results = self.service.texts([self._input(r, TEXT) for r in requests])
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

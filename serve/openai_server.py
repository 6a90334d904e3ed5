"""agff-serve's OpenAI-style HTTP front end: /v1/embeddings, /v1/rerank and /v1/models in front of the Triton models.

Triton's HTTP server hosts only its own routes, so this is a second server (aiohttp) on its own port. It reads a
request (`serve.openai_protocol`), sends its items to Triton's `image` and `text` models over Triton's HTTP
protocol (tritonclient's asyncio client), so requests from every client still meet in Triton's dynamic batcher,
and answers in OpenAI's shapes. A rerank scores with the `score` model: the bundle's fused similarity over the
K + 1 embeddings, image side first as the model was trained.

Every request is answered on its own: a malformed, oversized or unauthorised one gets its error (OpenAI's error
shape) and nothing else changes. A request whose items Triton refuses is retried item by item, so the error names
every bad item and its field.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import io
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from agff_deploy.manifest import ImageFormat
from agff_deploy.tokenization import ChatFormatter

from .coalescing import CoalescingQueue
from .openai_protocol import (
    EmbeddingRequest,
    Item,
    Limits,
    ProtocolError,
    embedding_request,
    encode_vector,
    matryoshka,
    request_json,
    rerank_request,
    response_json,
)
from .request_items import CANDIDATES, EMBEDDINGS, IMAGE, INSTRUCTION, QUERIES, SCORES, TASK, TEXT

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ModelCard:
    """The served model as /v1/models shows it, and what requests are checked against."""

    id: str
    dimensions: int  # D, each vector's length
    vectors: int  # K + 1 vectors an item (1 for a single-vector embedder)
    precision: str
    backend: str
    matryoshka: bool  # `dimensions` may cut the vectors (a Matryoshka-trained embedder)
    takes_task: bool  # a single-vector embedder's task instruction
    max_text_tokens: int
    limits: Limits = field(default_factory=Limits)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "model",
            "created": 0,
            "owned_by": "agff-deploy",
            "dimensions": self.dimensions,
            "vectors_per_item": self.vectors,
            "precision": self.precision,
            "backend": self.backend,
            "matryoshka": self.matryoshka,
            "accepts_task": self.takes_task,
            "max_text_tokens": self.max_text_tokens,
            "max_items": self.limits.max_items,
            "max_image_bytes": self.limits.max_image_bytes,
        }


class TokenCounter:
    """How many tokens the language encoder reads for an item: `usage` reports what the model processed."""

    def __init__(self, formatter: ChatFormatter, image: ImageFormat) -> None:
        self.formatter, self.image = formatter, image
        self.native = None if image.resize == "fixed" else image.preprocessor().settings

    def __call__(self, item: Item, task: str | None) -> int:
        image_tokens = None if item.image is None else self._image_tokens(item.image)
        return len(self.formatter.item_ids(item.text, image_tokens, task)[0])

    def _image_tokens(self, data: bytes) -> int:
        if self.native is None:
            return self.image.num_image_tokens
        from PIL import Image

        with Image.open(io.BytesIO(data)) as opened:  # the header only: the Triton model decodes the pixels
            width, height = opened.size
        h, w = self.native.resized_size(height, width)
        return (h // self.native.factor) * (w // self.native.factor)


class TritonModels:
    """agff-serve's `image`, `text` and `score` models, over Triton's HTTP protocol. Items of concurrent requests
    share Triton requests (`serve.coalescing`), at most `max_batch` items (Triton's largest batch) each."""

    def __init__(self, url: str, max_batch: int, in_flight: int = 2) -> None:
        import tritonclient.http as http
        import tritonclient.http.aio as aio

        self.http = http
        self.client = aio.InferenceServerClient(url, conn_limit=256)
        self.queues = {
            image: CoalescingQueue(functools.partial(self._embed_group, image), max_batch, in_flight)
            for image in (True, False)
        }

    async def close(self) -> None:
        await self.client.close()

    async def embed(self, items: Sequence[Item], task: str | None) -> list[np.ndarray | str]:
        """Each item's `[K + 1, D]` embeddings, or the message Triton refused it with (prefixed by its field).
        Images and texts go to their models in parallel."""
        results: list[np.ndarray | str] = [""] * len(items)
        groups: dict[bool, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.image is not None, []).append(i)
        answers = await asyncio.gather(
            *(self.queues[image].submit([(items[i], task) for i in group]) for image, group in groups.items())
        )
        for group, answer in zip(groups.values(), answers, strict=True):
            for i, result in zip(group, answer, strict=True):
                results[i] = result
        return results

    async def score(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        inputs = {QUERIES: queries.astype(np.float32), CANDIDATES: candidates.astype(np.float32)}
        return await self._infer("score", inputs, SCORES)

    async def _embed_group(self, image: bool, items: list[tuple[Item, str | None]]) -> list[np.ndarray | str]:
        """One Triton request; when Triton refuses it for an item, each item again on its own, so the error names
        every bad item and no other request's items are lost with it."""
        from tritonclient.utils import InferenceServerException

        try:
            embeddings = await self._infer(*self._request(image, items))
            return list(embeddings)
        except InferenceServerException as err:
            if err.status() != "400":  # not the items: the model server itself failed
                raise ProtocolError(f"the model server failed: {err.message()}", None, 502, "server_error") from err
            if len(items) == 1:
                return [_named(err, items[0][0].param)]
        return [result for answer in await asyncio.gather(*(self._embed_group(image, [i]) for i in items))
                for result in answer]  # fmt: skip

    def _request(self, image: bool, items: list[tuple[Item, str | None]]) -> tuple[str, dict[str, np.ndarray], str]:
        tasks = [task for _, task in items]
        task_input = {TASK: _column([task or "" for task in tasks])} if any(tasks) else {}
        if image:
            inputs = {IMAGE: _column([i.image for i, _ in items]), INSTRUCTION: _column([i.text for i, _ in items])}
            return "image", {**inputs, **task_input}, EMBEDDINGS
        return "text", {TEXT: _column([i.text for i, _ in items]), **task_input}, EMBEDDINGS

    async def _infer(self, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        tensors = []
        for name, array in inputs.items():
            datatype = "BYTES" if array.dtype == object else "FP32"
            tensor = self.http.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        result = await self.client.infer(model, tensors)
        return result.as_numpy(output)


def _column(values: Sequence[bytes | str | None]) -> np.ndarray:
    column = np.empty((len(values), 1), dtype=object)
    column[:, 0] = [v.encode() if isinstance(v, str) else v for v in values]
    return column


def _named(err: Exception, param: str) -> str:
    """Triton's message for a refused one-item request, the item named by its field in the API request."""
    message = err.message() if hasattr(err, "message") else str(err)
    for name in (IMAGE, TEXT, INSTRUCTION, TASK):
        if message.startswith(f"{name} 0"):
            return param + message[len(f"{name} 0") :]
    return f"{param}: {message}"


class FrontEnd:
    """The routes, the API key and the per-request flow."""

    def __init__(self, models: TritonModels, card: ModelCard, tokens: TokenCounter, api_key: str | None) -> None:
        self.models, self.card, self.tokens, self.api_key = models, card, tokens, api_key

    def app(self, max_body_bytes: int) -> web.Application:
        app = web.Application(client_max_size=max_body_bytes, middlewares=[self._errors, self._auth])
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/embeddings", self.embeddings)  # Infinity's path
        app.router.add_post("/v1/rerank", self.rerank)
        app.router.add_post("/rerank", self.rerank)
        app.router.add_get("/v1/models", self.models_list)
        app.router.add_get("/health", self.health)
        app.on_cleanup.append(lambda _: self.models.close())
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ProtocolError as err:
            return _response(err.body(), status=err.status)
        except web.HTTPRequestEntityTooLarge as err:
            error = ProtocolError(f"the body is over the server's limit: {err.text}", None, 413)
            return _response(error.body(), status=413)
        except web.HTTPException as err:
            error = ProtocolError(err.reason, None, err.status)
            return _response(error.body(), status=err.status)
        except Exception as err:  # noqa: BLE001  (one request's failure must never stop the server)
            error = ProtocolError(f"internal error: {type(err).__name__}: {err}", None, 500, "server_error")
            return _response(error.body(), status=500)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.api_key is not None and request.path != "/health":
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {self.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                raise ProtocolError(
                    "missing or wrong API key: send 'Authorization: Bearer <key>'", None, 401,
                    "invalid_request_error", "invalid_api_key",
                )  # fmt: skip
        return await handler(request)

    async def health(self, request: web.Request) -> web.Response:
        return _response({"status": "ok"})

    async def models_list(self, request: web.Request) -> web.Response:
        return _response({"object": "list", "data": [self.card.to_json()]})

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await _json(request)
        parsed = embedding_request(body, self.card.limits)
        self._check(parsed)
        vectors = await self._embed(parsed.items, parsed.task)
        chosen = matryoshka(vectors if parsed.vectors == "all" else vectors[:, 0], parsed.dimensions)
        data = []
        for index, item_vectors in enumerate(chosen):
            entry: dict[str, Any] = {"object": "embedding", "index": index}
            if parsed.vectors == "all":
                entry["embedding"] = encode_vector(item_vectors[0], parsed.encoding_format)
                entry["embeddings"] = encode_vector(item_vectors, parsed.encoding_format)
            else:
                entry["embedding"] = encode_vector(item_vectors, parsed.encoding_format)
            data.append(entry)
        tokens = sum(self.tokens(item, parsed.task) for item in parsed.items)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _response({"object": "list", "data": data, "model": self.card.id, "usage": usage})

    async def rerank(self, request: web.Request) -> web.Response:
        parsed = rerank_request(await _json(request), self.card.limits)
        self._check_model(parsed.model)
        items = [parsed.query, *parsed.documents]
        vectors = await self._embed(items, None)
        scores = await self._scores(items, vectors)
        order = np.argsort(-scores, kind="stable")[: parsed.top_n]
        results = []
        for index in order:
            result: dict[str, Any] = {"index": int(index), "relevance_score": float(scores[index])}
            if parsed.return_documents:
                document = parsed.documents[index]
                result["document"] = {"text": document.text}
                if document.image is not None:
                    result["document"]["image_bytes"] = len(document.image)
            results.append(result)
        tokens = sum(self.tokens(item, None) for item in items)
        return _response(
            {"id": f"rerank-{time.time_ns()}", "model": self.card.id, "results": results,
             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        )  # fmt: skip

    async def _scores(self, items: list[Item], vectors: np.ndarray) -> np.ndarray:
        """The query's fused score with each document, image side first: a text query scores each image document
        as `score(image, text)`; an image query scores text documents as `score(query, text)`; two items of one
        kind are scored query first."""
        query_is_image = items[0].image is not None
        scores = np.empty(len(items) - 1, np.float32)
        documents = np.arange(1, len(items))
        image_documents = documents[[items[d].image is not None for d in documents]]
        text_documents = documents[[items[d].image is None for d in documents]]
        query = vectors[:1]
        if len(image_documents) and not query_is_image:
            scores[image_documents - 1] = (await self.models.score(vectors[image_documents], query))[:, 0]
            image_documents = image_documents[:0]
        for group in (image_documents, text_documents):
            if len(group):
                scores[group - 1] = (await self.models.score(query, vectors[group]))[0]
        return scores

    async def _embed(self, items: list[Item], task: str | None) -> np.ndarray:
        results = await self.models.embed(items, task)
        failures = [r for r in results if isinstance(r, str)]
        if failures:
            params = [item.param for item, r in zip(items, results, strict=True) if isinstance(r, str)]
            raise ProtocolError("; ".join(failures), params[0] if len(params) == 1 else ", ".join(params))
        return np.stack(results)

    def _check(self, parsed: EmbeddingRequest) -> None:
        self._check_model(parsed.model)
        card = self.card
        if parsed.dimensions is not None and not card.matryoshka:
            raise ProtocolError(
                f"'dimensions' {parsed.dimensions}: {card.id} gives {card.dimensions}-dimension vectors and was not "
                "trained to be cut (only a Matryoshka-trained embedder, such as Qwen3-VL-Embedding, is)",
                "dimensions",
            )
        if parsed.dimensions is not None and parsed.dimensions > card.dimensions:
            raise ProtocolError(f"'dimensions' {parsed.dimensions}: at most {card.dimensions}", "dimensions")
        if parsed.task is not None and not card.takes_task:
            raise ProtocolError(
                f"'task': {card.id} takes no task instruction (an AGFF model's instruction is an item's text)", "task"
            )

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.card.id:
            raise ProtocolError(
                f"model {model!r} is not served here; this server serves {self.card.id!r} (GET /v1/models)",
                "model", 404, "invalid_request_error", "model_not_found",
            )  # fmt: skip


def _response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=response_json(body), status=status, content_type="application/json")


async def _json(request: web.Request) -> Any:
    try:
        return request_json(await request.read())
    except ValueError as err:
        raise ProtocolError(f"the body is not JSON ({err})") from None


async def run_front_end(front_end: FrontEnd, host: str, port: int, max_body_bytes: int, until: Awaitable) -> None:
    """Serve until `until` completes (the Triton process exiting) or the task is cancelled (Ctrl-C)."""
    runner = web.AppRunner(front_end.app(max_body_bytes), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await until
    finally:
        await runner.cleanup()

"""The OpenAI-style request bodies agff-serve's HTTP front end takes, read into items, and the vectors it returns.

Three shapes of /v1/embeddings body are read, as the servers users already call take them (paraphrased from
OpenAI's API reference, vLLM's pooling protocol and Infinity's models):

- `input`: a string or a list of strings, each a text item (OpenAI; token-id lists are refused: this server
  tokenises with the model's own tokenizer);
- `input` with `"modality": "image"`: each string an image as a data URI or bare base64 (Infinity);
- `messages`: one chat conversation, one item (vLLM): the user turn's content parts, `{"type": "text"}` and
  `{"type": "image_url", "image_url": {"url": ...}}`; an image with text is an image item whose text is its
  instruction.

Images come as data URIs or base64 only: a server that fetched whatever URL it was given would be an open proxy
into the network it sits in. Every error is a `ProtocolError` naming the field (`param`, in OpenAI's error shape),
raised before any model runs.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

ENCODING_FORMATS = ("float", "base64")
VECTOR_CHOICES = ("global", "all")  # the default single vector, or every one of the item's K + 1 (AGFF)
DATA_URI = re.compile(r"data:image/[\w.+-]+;base64,(?P<data>.*)", re.DOTALL)


class ProtocolError(Exception):
    """A request the front end refuses: an HTTP status, OpenAI's error `type` and `code`, and the field (`param`)."""

    def __init__(
        self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code

    def body(self) -> dict[str, Any]:
        """OpenAI's error shape."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may hold; the body's size is the HTTP server's own limit (413)."""

    max_items: int = 256
    max_image_bytes: int = 16 << 20


@dataclass(frozen=True)
class Item:
    """One thing to embed: a text, an image, or an image with its instruction; `param` names it in errors."""

    param: str
    text: str = ""
    image: bytes | None = None


@dataclass(frozen=True)
class EmbeddingRequest:
    items: list[Item]
    encoding_format: str
    dimensions: int | None
    vectors: str
    task: str | None
    model: str | None


@dataclass(frozen=True)
class RerankRequest:
    query: Item
    documents: list[Item]
    top_n: int
    return_documents: bool
    model: str | None


def embedding_request(body: Any, limits: Limits) -> EmbeddingRequest:
    """A /v1/embeddings (or Infinity's /embeddings) body read into items and options."""
    body = _object(body)
    if ("input" in body) == ("messages" in body):
        raise ProtocolError("send either 'input' (texts, or images with modality 'image') or 'messages'", "input")
    if "messages" in body:
        items = [_conversation(body["messages"], limits)]
    else:
        modality = _choice(body, "modality", ("text", "image"), "text")
        items = _inputs(body["input"], modality, limits)
    return EmbeddingRequest(
        items=items,
        encoding_format=_choice(body, "encoding_format", ENCODING_FORMATS, "float"),
        dimensions=_positive(body, "dimensions"),
        vectors=_choice(body, "vectors", VECTOR_CHOICES, "global"),
        task=_optional_text(body, "task"),
        model=_optional_text(body, "model"),
    )


def rerank_request(body: Any, limits: Limits) -> RerankRequest:
    """A /v1/rerank body (Cohere's, Jina's and vLLM's shape): a query, documents, `top_n`, `return_documents`.
    Either side is a text or an image: a string, or `{"text": ...}` / `{"image": DATA_URI}`."""
    body = _object(body)
    if "query" not in body:
        raise ProtocolError("'query' is missing: send the text or image to rank the documents against", "query")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise ProtocolError("'documents' must be a non-empty list of texts or images", "documents")
    if len(documents) > limits.max_items:
        raise ProtocolError(f"{len(documents)} documents: at most {limits.max_items} a request", "documents")
    top_n = _positive(body, "top_n") or len(documents)
    return RerankRequest(
        query=_rerank_item(body["query"], "query", limits),
        documents=[_rerank_item(d, f"documents[{i}]", limits) for i, d in enumerate(documents)],
        top_n=min(top_n, len(documents)),
        return_documents=_flag(body, "return_documents", False),
        model=_optional_text(body, "model"),
    )


def encode_vector(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    """A float32 vector (or array) as OpenAI returns it: floats (`response_json` writes each as float32's shortest
    text, exact once read back into float32), or base64 of its little-endian bytes."""
    array = np.ascontiguousarray(vector, dtype="<f4")
    if encoding_format == "base64":
        return base64.b64encode(array.tobytes()).decode("ascii")
    return array


def response_json(body: Any) -> bytes:
    """A response body as JSON, numpy arrays included. orjson writes a float32 in its shortest form (about 10
    characters against the 18 of its float64 value), which nearly halves a float response and its parsing."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def request_json(body: bytes) -> Any:
    """A request body parsed; a `ValueError` when it is not JSON."""
    return orjson.loads(body)


def matryoshka(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` of each vector, renormalised (what a Matryoshka-trained embedder is cut to)."""
    if dimensions is None:
        return vectors
    kept = vectors[..., :dimensions]
    return kept / np.maximum(np.linalg.norm(kept, axis=-1, keepdims=True), 1e-12)


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise ProtocolError("the body must be a JSON object")
    return body


def _inputs(raw: Any, modality: str, limits: Limits) -> list[Item]:
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not values:
        raise ProtocolError("'input' must be a string or a non-empty list of strings", "input")
    if len(values) > limits.max_items:
        raise ProtocolError(f"'input' holds {len(values)} items: at most {limits.max_items} a request", "input")
    items = []
    for i, value in enumerate(values):
        param = f"input[{i}]"
        if not isinstance(value, str):
            what = "token ids" if isinstance(value, int | list) else type(value).__name__
            why = "send text (this server tokenises with its model's tokenizer)"
            raise ProtocolError(f"{param} is {what}: {why}", param)
        items.append(Item(param, image=_image(value, param, limits)) if modality == "image" else Item(param, value))
    return items


def _conversation(messages: Any, limits: Limits) -> Item:
    """vLLM's chat-style item: the user turn's text and at most one image (a system turn is refused: the task
    instruction goes in `task`)."""
    if not isinstance(messages, list) or not messages:
        raise ProtocolError("'messages' must be a non-empty list of chat messages", "messages")
    texts, images = [], []
    for m, message in enumerate(messages):
        param = f"messages[{m}]"
        if not isinstance(message, dict) or message.get("role") != "user":
            raise ProtocolError(f"{param}: only user messages are read (put a task instruction in 'task')", param)
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise ProtocolError(f"{param}.content must be a string or a list of content parts", f"{param}.content")
        for p, part in enumerate(parts):
            where = f"{param}.content[{p}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                images.append(_image(part["image_url"].get("url"), where, limits))
            else:
                raise ProtocolError(f"{where}: a content part is {{'type': 'text'}} or {{'type': 'image_url'}}", where)
    if len(images) > 1:
        raise ProtocolError(f"{len(images)} images in one conversation: an item holds at most one", "messages")
    return Item("messages", " ".join(texts), images[0] if images else None)


def _rerank_item(raw: Any, param: str, limits: Limits) -> Item:
    if isinstance(raw, str):
        return Item(param, raw)
    if isinstance(raw, dict) and isinstance(raw.get("text"), str) and "image" not in raw:
        return Item(param, raw["text"])
    if isinstance(raw, dict) and "image" in raw:
        return Item(param, str(raw.get("text") or ""), _image(raw["image"], f"{param}.image", limits))
    raise ProtocolError(f"{param} must be a text, {{'text': ...}} or {{'image': DATA_URI}}", param)


def _image(value: Any, param: str, limits: Limits) -> bytes:
    """An image sent as a data URI or bare base64, decoded; a URL is refused (no fetching)."""
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{param}: an image is a data URI (data:image/png;base64,...) or base64 text", param)
    if value.startswith(("http://", "https://", "file:")):
        raise ProtocolError(
            f"{param}: this server does not fetch URLs; send the image's bytes as a data URI "
            "(data:image/jpeg;base64,...)",
            param,
        )
    match = DATA_URI.fullmatch(value)
    if value.startswith("data:") and match is None:
        raise ProtocolError(f"{param}: a data URI must be data:image/<type>;base64,<data>", param)
    encoded = match["data"] if match else value
    if len(encoded) * 3 // 4 > limits.max_image_bytes:
        raise ProtocolError(f"{param}: over the {limits.max_image_bytes / 2**20:g} MiB an image may have", param)
    try:
        return _strict_base64(encoded)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{param}: not valid base64", param) from None


def _strict_base64(encoded: str) -> bytes:
    """Base64 that refuses stray characters. Python 3.11's strict decoder checks in C; 3.10's `validate` runs a
    regular expression over the whole image first, which cost the front end more than the decoding."""
    if sys.version_info >= (3, 11):
        return binascii.a2b_base64(encoded, strict_mode=True)
    return base64.b64decode(encoded, validate=True)


def _choice(body: Mapping[str, Any], field: str, choices: Sequence[str], default: str) -> str:
    value = body.get(field, default)
    if value is None:
        return default
    if value not in choices:
        raise ProtocolError(f"'{field}' is {value!r}: choose one of {', '.join(choices)}", field)
    return value


def _positive(body: Mapping[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProtocolError(f"'{field}' must be a positive integer (got {value!r})", field)
    return value


def _flag(body: Mapping[str, Any], field: str, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"'{field}' must be true or false", field)
    return value


def _optional_text(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"'{field}' must be a string", field)
    return value

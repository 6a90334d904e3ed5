"""The served tensors' names, and one request's items checked and decoded the same way by agff-serve's models
(`serve.embedder_model`) and the standalone repository's preprocess models (`serve.preprocess_model`).

Whatever is wrong with an item becomes a `RequestError` naming it; the model
answers that request with it and goes on with the rest of the batch. Texts
over the model's token budget are refused, never truncated: a server cannot
show a warning to the client that sent them.
"""

from __future__ import annotations

import numpy as np

from agff_deploy.errors import ImageSizeError, InputError
from agff_deploy.images import ImageLoadError, decode_image_bytes
from agff_deploy.preprocessing import ImagePreprocessor, NativePreprocessor
from agff_deploy.tokenization import NO_TASK, ChatFormatter

IMAGE, INSTRUCTION, TEXT, TASK, EMBEDDINGS = "image", "instruction", "text", "task", "embeddings"
QUERIES, CANDIDATES, SCORES = "queries", "candidates", "scores"


class RequestError(InputError):
    """What is wrong with one request; it becomes that request's error response."""


class RequestItems:
    def __init__(
        self, formatter: ChatFormatter, preprocessor: ImagePreprocessor | NativePreprocessor, max_pixels: int
    ) -> None:
        self.formatter = formatter
        self.preprocessor = preprocessor
        self.max_pixels = max_pixels

    def images(self, images: np.ndarray, instructions: np.ndarray | None) -> tuple[list[np.ndarray], list[str]]:
        """Encoded image files `[n, 1]` -> resized `HxWx3` arrays, and each image's instruction ("" when none)."""
        rows = [self._pixels(data, f"{IMAGE} {i}") for i, data in enumerate(images.reshape(-1))]
        texts = [""] * len(rows) if instructions is None else self.texts(instructions, INSTRUCTION, allow_empty=True)
        if len(texts) != len(rows):
            raise RequestError(f"{len(texts)} instructions for {len(rows)} images: send one per image")
        if not rows:
            raise RequestError("the request holds no items")
        return rows, texts

    def tasks(self, raw: np.ndarray | None, count: int) -> list[str | None]:
        """A request's task instructions `[n, 1]` (UTF-8; one per item, or one for all) -> one per item; absent or
        empty: the model's default."""
        if raw is None:
            return [None] * count
        if self.formatter.task is None:
            raise RequestError(f"{TASK}: {NO_TASK}")
        tasks = [task or None for task in self.texts(raw, TASK, allow_empty=True)]
        if len(tasks) == 1:
            return tasks * count
        if len(tasks) != count:
            raise RequestError(f"{len(tasks)} tasks for {count} items: send one for all or one per item")
        return tasks

    def texts(self, raw: np.ndarray, what: str = TEXT, allow_empty: bool = False) -> list[str]:
        """UTF-8 items `[n, 1]` -> texts, each within the model's token budget."""
        texts = [self._text(item, f"{what} {i}", allow_empty) for i, item in enumerate(raw.reshape(-1))]
        if not texts and not allow_empty:
            raise RequestError("the request holds no items")
        return texts

    def _pixels(self, data: object, name: str) -> np.ndarray:
        if not isinstance(data, bytes):
            raise RequestError(f"{name} must be the bytes of an encoded image file (BYTES)")
        try:
            image, _ = decode_image_bytes(data, name, self.max_pixels)
        except ImageLoadError as err:
            raise RequestError(str(err)) from err
        try:
            return self.preprocessor.resize(image)
        except ImageSizeError as err:
            raise RequestError(f"{name}: {err}") from err

    def _text(self, item: object, name: str, allow_empty: bool) -> str:
        if not isinstance(item, bytes):
            raise RequestError(f"{name} must be UTF-8 text (BYTES)")
        try:
            text = item.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestError(f"{name} is not UTF-8 ({err.reason} at byte {err.start})") from err
        if not allow_empty and not text.strip():
            raise RequestError(f"{name} is empty: send the text to embed")
        tokens = len(self.formatter.text_ids(text))
        if tokens > self.formatter.max_text_tokens:
            raise RequestError(
                f"{name} is {tokens} tokens, over the model's {self.formatter.max_text_tokens}: shorten it "
                "(the server does not truncate)"
            )
        return text

"""The batch pipeline: images decoded ahead in worker threads while the model runs, batched by size, each failure
kept per item.

`Embedder.embed_images`, `agff-run` and the throughput benchmark all embed
images through `embed_in_batches`. Decoding (Pillow) releases the GIL, so on
a small CPU the next images decode while the current ones are inferred. The
images of a window of `window_batches` batches are batched by patch count
(`runtime.bucketing`) and their results put back in input order. An image that
cannot be read is an error line naming it; the others go on.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from agff_deploy.errors import ImageSizeError
from agff_deploy.images import ImageLoadError, open_image
from agff_deploy.preprocessing import ImagePreprocessor, NativePreprocessor

from .bucketing import WINDOW_BATCHES, buckets, in_input_order

ImageInput = str | Path | Image.Image | np.ndarray
# What an image is embedded with besides its pixels (its instruction, or whatever the caller pairs with it).
Prompt = TypeVar("Prompt")
# Normalised `[3, H, W]` images (of one size, or each its own at native resolution) and their prompts.
EmbedPixels = Callable[[list[np.ndarray], list[Prompt]], np.ndarray]
DECODE_AHEAD = 2  # decode tasks (of one batch of images each) in flight at least, one per worker thread


@dataclass
class Outcome:
    """What a batch job did: the embedded items' names in order, their embeddings, and every failure."""

    names: list[str] = field(default_factory=list)  # a path as given, or `image <index>` for an in-memory image
    embeddings: list[np.ndarray] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    inference_s: float = 0.0
    wall_s: float = 0.0

    def stacked(self) -> np.ndarray:
        return np.concatenate(self.embeddings) if self.embeddings else np.zeros((0, 0, 0), np.float32)


@dataclass
class _Decoded:
    """One batch ready for the model: the items that decoded, and what happened to the others."""

    names: list[str]
    prompts: list  # each item's, as the caller gave them
    pixels: list[np.ndarray]
    errors: list[str]
    notes: list[str]

    def extend(self, other: _Decoded) -> None:
        """Append the items of the decode batch after this one."""
        self.names += other.names
        self.prompts += other.prompts
        self.pixels += other.pixels
        self.errors += other.errors
        self.notes += other.notes


def decode(item: ImageInput, max_pixels: int) -> tuple[Image.Image, list[str]]:
    """A path (opened safely, with notes), a PIL image or an HxWx3 uint8 array -> an RGB PIL image."""
    if isinstance(item, (str, Path)):
        return open_image(item, max_pixels)
    if isinstance(item, np.ndarray):
        return Image.fromarray(item), []
    return item, []


def embed_in_batches(
    items: Sequence[ImageInput],
    prompts: Sequence[Prompt],
    embed: EmbedPixels,
    preprocessor: ImagePreprocessor | NativePreprocessor,
    batch_size: int,
    max_pixels: int,
    on_error: Callable[[str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_done: Callable[[int], None] | None = None,
    window_batches: int = WINDOW_BATCHES,
) -> Outcome:
    """Batches of `items` through `embed(pixels, prompts)`, decoding the next window while one runs.

    The items are read in windows of `window_batches * batch_size`; the images of a window that decode are batched by
    patch count (`runtime.bucketing`), and the outcome holds them in input order. While a window is embedded the next
    one decodes, so at most two windows of decoded images are held at once. `window_batches=1` batches in input order.

    `on_error` and `on_note` see each failure and notice as its decode batch comes up (notes default to Python
    warnings); `on_done` sees how many items each failing decode batch and each embedded batch settled.
    """
    if window_batches < 1:
        raise ValueError(f"window_batches must be at least 1, got {window_batches}")
    outcome = Outcome()
    started = time.perf_counter()
    chunks = [range(i, min(i + batch_size, len(items))) for i in range(0, len(items), batch_size)]

    def prepare(indices: range) -> _Decoded:
        return _decode_batch(items, prompts, indices, preprocessor, max_pixels)

    def embed_window(window: _Decoded) -> None:
        if not window.pixels:
            return
        batches = buckets(window.pixels, batch_size)
        parts = []
        for batch in batches:
            t0 = time.perf_counter()
            parts.append(embed([window.pixels[i] for i in batch], [window.prompts[i] for i in batch]))
            outcome.inference_s += time.perf_counter() - t0
            if on_done:
                on_done(len(batch))
        outcome.embeddings.append(in_input_order(parts, batches))
        outcome.names += window.names

    window = _Decoded([], [], [], [], [])
    # One window ahead: when a window's last decode batch is taken, the whole next window has been handed out.
    ahead = max(window_batches, DECODE_AHEAD)
    with ThreadPoolExecutor(max_workers=DECODE_AHEAD) as pool:
        for n, chunk in enumerate(_ahead(pool, chunks, prepare, ahead), 1):
            if on_error:
                for line in chunk.errors:
                    on_error(line)
            for line in chunk.notes:
                (on_note or warnings.warn)(line)
            outcome.errors += chunk.errors
            if on_done and chunk.errors:
                on_done(len(chunk.errors))
            window.extend(chunk)
            if n % window_batches == 0 or n == len(chunks):
                embed_window(window)
                window = _Decoded([], [], [], [], [])  # its images are freed before the next window is read
    outcome.wall_s = time.perf_counter() - started
    return outcome


def _decode_batch(
    items: Sequence[ImageInput],
    prompts: Sequence[Prompt],
    indices: range,
    preprocessor: ImagePreprocessor | NativePreprocessor,
    max_pixels: int,
) -> _Decoded:
    """Decode and preprocess one batch (in a worker thread); an image that cannot be read or sized is an error line
    naming it."""
    decoded = _Decoded([], [], [], [], [])
    for i in indices:
        item = items[i]
        name = str(item) if isinstance(item, (str, Path)) else f"image {i}"
        try:
            image, notes = decode(item, max_pixels)
            pixels = preprocessor.normalize(preprocessor.resize(image))
        except ImageLoadError as err:
            decoded.errors.append(str(err))
            continue
        except ImageSizeError as err:
            decoded.errors.append(f"{name}: {err}")
            continue
        decoded.names.append(name)
        decoded.prompts.append(prompts[i])
        decoded.pixels.append(pixels)
        decoded.notes += notes
    return decoded


T = TypeVar("T")
R = TypeVar("R")


def _ahead(pool: ThreadPoolExecutor, items: list[T], fn: Callable[[T], R], ahead: int) -> Iterator[R]:
    """`map(fn, items)` computed `ahead` items ahead in `pool`, in order."""
    pending = [pool.submit(fn, item) for item in items[:ahead]]
    for i in range(len(items)):
        result = pending.pop(0).result()
        if i + ahead < len(items):
            pending.append(pool.submit(fn, items[i + ahead]))
        yield result

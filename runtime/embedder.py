"""The Python API: load a model from any artifact and embed, score and classify without knowing the backend.

    with Embedder.load("bundle/") as model:            # or model.plan, an .onnx, a checkpoint folder
        images = model.embed_images(["a.jpg", "b.jpg"])   # [N, K+1, D]
        texts = model.embed_texts(["a red circle"])
        scores = model.score(images, texts)              # [N, 1] fused AGFF similarity

Scoring convention: put the image side first. AGFF's fusion is not symmetric
(global-fine vs fine-global) and the trainer scores (image, text) pairs, so a
text query against images is `score(images, text).T`; `rank` does that for you.

Runners are activated on entering the `with` block (or on first use) and
deactivated in reverse order on leaving it (or `close()`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from agff_deploy.contract import CANDIDATES, IMAGE_ENCODER, QUERIES, SCORER, TEXT_ENCODER, Feed
from agff_deploy.errors import InputError
from agff_deploy.images import DEFAULT_MAX_PIXELS, ImageLoadError

from .bucketing import WINDOW_BATCHES, buckets, in_input_order
from .loading import load_model
from .pipeline import ImageInput, Outcome, decode, embed_in_batches
from .runner import Runner
from .scoring import fused_similarity
from .spec import ModelSpec

# A task instruction for every item, one per item, or None (the model's default).
Task = str | Sequence[str | None] | None


def _per_item(value: str | Sequence | None, count: int, what: str) -> list:
    """One value for every item, or one per item (checked to be as many as the items)."""
    values = [value] * count if value is None or isinstance(value, str) else list(value)
    if len(values) != count:
        raise InputError(f"{len(values)} {what} for {count} items: give one for all or one per item")
    return values


class Embedder:
    def __init__(self, spec: ModelSpec, runners: dict[str, Runner], backend: str, source: Path, model_id: str) -> None:
        self.spec = spec
        self.runners = runners
        self.backend = backend
        self.source = source
        self.model_id = model_id  # sha256 of the checkpoint weights every artifact of this model comes from
        self.encoder = spec.feed_encoder()
        self.formatter = self.encoder.formatter
        self.preprocessor = self.encoder.preprocessor
        self.batch_size = spec.batch_size
        self.window_batches = WINDOW_BATCHES  # batches whose images are sorted by size together; 1: input order
        self._active = ExitStack()

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
    ) -> Embedder:
        """A TensorRT plan, an ONNX graph, a bundle folder or a checkpoint folder; the backend follows the path."""
        loaded = load_model(Path(path), backend, precision, threads)
        return cls(loaded.spec, loaded.runners, loaded.backend, loaded.source, loaded.model_id)

    def __enter__(self) -> Embedder:
        self.activate(list(self.runners))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def activate(self, graphs: Sequence[str]) -> None:
        """Load only these graphs now, the others on first use: a server's text model never loads the image encoder."""
        for name in graphs:
            self._runner(name)

    def close(self) -> None:
        self._active.close()

    def _runner(self, graph: str) -> Runner:
        runner = self.runners[graph]
        if not runner.is_active:
            self._active.enter_context(runner)
        return runner

    def _run(self, graph: str, feed: Feed) -> np.ndarray:
        runner = self._runner(graph)
        return runner.infer(feed)[runner.spec.output]

    def pixels(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Normalised `[3, H, W]` float32 images for paths, PIL images or HxWx3 uint8 arrays."""
        pre = self.preprocessor
        return [pre.normalize(pre.resize(decode(image, DEFAULT_MAX_PIXELS)[0])) for image in images]

    def embed_pixels(
        self, pixels: Sequence[np.ndarray], instructions: str | Sequence[str] = "", task: Task = None
    ) -> np.ndarray:
        """Preprocessed images (+ an instruction per image, or one for all; and a task, see `embed_texts`) ->
        `[N, K+1, D]`, in input order.

        The images are batched by size (`runtime.bucketing`): they are all in memory already, so all of them are
        sorted together.
        """
        prompts = _per_item(instructions, len(pixels), "instructions")
        tasks = _per_item(task, len(pixels), "tasks")
        batches = buckets(pixels, self.batch_size)
        parts = [
            self.embed_batch([pixels[i] for i in b], [prompts[i] for i in b], [tasks[i] for i in b]) for b in batches
        ]
        return in_input_order(parts, batches) if parts else self._empty()

    def embed_batch(
        self, pixels: Sequence[np.ndarray], instructions: Sequence[str], tasks: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """One batch of preprocessed images and their instructions (and tasks) -> `[n, K+1, D]`, as given: no
        batching by size (for callers that batch already, such as `runtime.pipeline`)."""
        patches = self.encoder.patches(list(pixels))
        names = ["instruction"] * len(pixels)
        feed = self.encoder.image_feed(patches, list(instructions), names=names, tasks=tasks)
        return self._run(IMAGE_ENCODER.name, feed)

    def try_embed_images(
        self,
        images: Sequence[ImageInput],
        instructions: str | Sequence[str] = "",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        on_error: Callable[[str], None] | None = None,
        on_note: Callable[[str], None] | None = None,
        on_done: Callable[[int], None] | None = None,
        task: Task = None,
    ) -> Outcome:
        """Every image that can be read, embedded in batches of similar sizes with decoding overlapped
        (`runtime.pipeline`); the outcome names the embedded items in input order and holds one error line for each
        image that could not be."""
        prompts = list(
            zip(
                _per_item(instructions, len(images), "instructions"), _per_item(task, len(images), "tasks"), strict=True
            )
        )
        return embed_in_batches(
            images,
            prompts,
            lambda pixels, pairs: self.embed_batch(pixels, *zip(*pairs, strict=True)),
            self.preprocessor,
            self.batch_size,
            max_pixels,
            on_error,
            on_note,
            on_done,
            self.window_batches,
        )

    def embed_images(
        self, images: Sequence[ImageInput], instructions: str | Sequence[str] = "", task: Task = None
    ) -> np.ndarray:
        """`[N, K+1, D]`, or an ImageLoadError naming every image that could not be read (and why)."""
        outcome = self.try_embed_images(images, instructions, task=task)
        if outcome.errors:
            raise ImageLoadError("; ".join(outcome.errors))
        return outcome.stacked()

    def embed_texts(self, texts: Sequence[str], names: Sequence[str] | None = None, task: Task = None) -> np.ndarray:
        """`[N, K+1, D]`; `names` label the texts in truncation warnings (default: `text <index>`).

        `task` is a single-vector embedder's task instruction (GME's and Qwen3-VL-Embedding's "instruction", in the
        system turn), for every item or one per item; None: the model's default. Retrieval embeds its queries with a
        task ("Retrieve images that match the given text.") and its documents with the default. An AGFF model takes
        none: its instruction is an image item's text.
        """
        names = list(names) if names else [f"text {i}" for i in range(len(texts))]
        tasks = _per_item(task, len(texts), "tasks")
        parts = []
        for i in range(0, len(texts), self.batch_size):
            window = slice(i, i + self.batch_size)
            feed = self.encoder.text_feed(texts[window], names[window], tasks[window])
            parts.append(self._run(TEXT_ENCODER.name, feed))
        return np.concatenate(parts) if parts else self._empty()

    def _empty(self) -> np.ndarray:
        return np.zeros((0, 0, 0), np.float32)

    def score(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Fused similarity `[Nq, Nc]`: the bundle's scorer graph when there is one, numpy otherwise."""
        if SCORER.name in self.runners:
            feed = {QUERIES.name: queries.astype(np.float32), CANDIDATES.name: candidates.astype(np.float32)}
            return self._run(SCORER.name, feed)
        return self.numpy_score(queries, candidates)

    def numpy_score(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The same fusion in numpy (runtime/scoring.py), for artifacts without a scorer graph."""
        return fused_similarity(queries, candidates, self.spec.t_in, self.spec.t_f, self.spec.bias)

    def rank(self, text_query: np.ndarray, images: np.ndarray) -> np.ndarray:
        """Scores of one text query `[K+1, D]` against images `[N, K+1, D]`, image side first as trained."""
        return self.score(images, text_query[None])[:, 0]

    def classify(
        self, images: Sequence[ImageInput] | np.ndarray, labels: Sequence[str], template: str = "a photo of a {}"
    ) -> list[dict[str, Any]]:
        """Zero-shot: each image's best label and the softmax over labels at the model's temperature."""
        if not labels:
            raise InputError("classify needs at least one label")
        image_emb = images if isinstance(images, np.ndarray) and images.ndim == 3 else self.embed_images(images)
        scores = self.score(image_emb, self.embed_texts([template.format(label) for label in labels]))
        logits = scores / self.spec.temperature
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        return [
            {
                "label": labels[int(p.argmax())],
                "probability": float(p.max()),
                "scores": dict(zip(labels, map(float, s), strict=True)),
            }
            for p, s in zip(probs, scores, strict=True)
        ]

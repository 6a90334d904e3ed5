"""The Python API: load a model from any artifact and embed, score and classify without knowing the backend.

    with Embedder.load("bundle/") as model:            # or model.plan, an .onnx, a checkpoint folder
        images = model.embed_images(["a.jpg", "b.jpg"])   # [N, K+1, D]
        texts = model.embed_texts(["a red circle"])
        scores = model.score(images, texts)              # [N, 1] fused AGFF similarity

Scoring convention: put the image side first. AGFF's fusion is not symmetric
(global-fine vs fine-global) and the trainer scores (image, text) pairs, so a
text query against images is `score(images, text).T`; `rank` does that for you.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agff_deploy.images import open_image
from agff_deploy.manifest import MANIFEST_FILE, check_external_data, graph_entry

from .runner import Runner
from .scoring import fused_similarity
from .spec import ModelSpec

BACKENDS = ("tensorrt", "onnxruntime", "pytorch")
GRAPHS = ("image_encoder", "text_encoder", "scorer")
ImageInput = str | Path | Image.Image | np.ndarray


class Embedder:
    def __init__(self, spec: ModelSpec, runners: dict[str, Runner], backend: str, source: Path, model_id: str) -> None:
        self.spec = spec
        self.runners = runners
        self.backend = backend
        self.source = source
        self.model_id = model_id  # sha256 of the checkpoint weights every artifact of this model comes from
        self.formatter = spec.formatter()
        self.preprocessor = spec.preprocessor()
        self.batch_size = spec.batch_size

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
    ) -> Embedder:
        """A TensorRT plan, an ONNX graph, a bundle folder or a checkpoint folder; the backend follows the path."""
        from .loading import load_embedder

        return load_embedder(cls, Path(path), backend, precision, threads)

    def __enter__(self) -> Embedder:
        for runner in self.runners.values():
            runner.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for runner in self.runners.values():
            if runner.active:
                runner.deactivate()

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        runner = self.runners[graph]
        if not runner.active:
            runner.activate()
        return next(iter(runner(feeds).values()))

    def pixels(self, images: Sequence[ImageInput]) -> np.ndarray:
        """`[N, 3, H, W]` float32 for paths, PIL images or HxWx3 uint8 arrays."""
        loaded = []
        for image in images:
            if isinstance(image, (str, Path)):
                image = open_image(image)[0]
            elif isinstance(image, np.ndarray):
                image = Image.fromarray(image)
            loaded.append(self.preprocessor.resize(image))
        return self.preprocessor.normalize(np.stack(loaded))

    def embed_pixels(self, pixels: np.ndarray, instructions: str | Sequence[str] = "") -> np.ndarray:
        """Preprocessed pixels (+ an instruction per image, or one for all) -> `[N, K+1, D]`."""
        prompts = [instructions] * len(pixels) if isinstance(instructions, str) else list(instructions)
        if len(prompts) != len(pixels):
            raise ValueError(f"{len(prompts)} instructions for {len(pixels)} images")
        parts = []
        for i in range(0, len(pixels), self.batch_size):
            tokens = self.formatter.encode(
                prompts[i : i + self.batch_size], with_image=True, names=["instruction"] * self.batch_size
            )
            feeds = {
                "pixel_values": np.ascontiguousarray(pixels[i : i + self.batch_size], dtype=np.float32),
                "input_ids": tokens.input_ids,
                "attention_mask": tokens.attention_mask,
            }
            parts.append(self._run("image_encoder", feeds))
        return np.concatenate(parts) if parts else self._empty()

    def embed_images(self, images: Sequence[ImageInput], instructions: str | Sequence[str] = "") -> np.ndarray:
        return self.embed_pixels(self.pixels(images), instructions)

    def embed_texts(self, texts: Sequence[str], names: Sequence[str] | None = None) -> np.ndarray:
        """`[N, K+1, D]`; `names` label the texts in truncation warnings (default: `text <index>`)."""
        names = list(names) if names else [f"text {i}" for i in range(len(texts))]
        parts = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.formatter.encode(
                texts[i : i + self.batch_size], with_image=False, names=names[i : i + self.batch_size]
            )
            parts.append(
                self._run("text_encoder", {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask})
            )
        return np.concatenate(parts) if parts else self._empty()

    def _empty(self) -> np.ndarray:
        return np.zeros((0, 0, 0), np.float32)

    def score(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Fused similarity `[Nq, Nc]`: the bundle's scorer graph when there is one, numpy otherwise."""
        if "scorer" in self.runners:
            return self._run(
                "scorer", {"queries": queries.astype(np.float32), "candidates": candidates.astype(np.float32)}
            )
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
            raise ValueError("classify needs at least one label")
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


def bundle_folder_of(path: Path) -> Path | None:
    """The bundle folder holding `path` (itself, its parent or grandparent), if any."""
    for folder in (path, path.parent, path.parent.parent):
        if (folder / MANIFEST_FILE).is_file():
            return folder
    return None


def precision_of_graph(manifest: dict[str, Any], bundle: Path, graph: Path) -> str:
    for precision, graphs in manifest["graphs"].items():
        if any((bundle / e["file"]).resolve() == graph.resolve() for e in graphs.values()):
            return precision
    raise ValueError(f"{graph} is not listed in {bundle / MANIFEST_FILE}")


def graph_file(manifest: dict[str, Any], bundle: Path, precision: str, name: str) -> tuple[Path, str]:
    entry = graph_entry(manifest, precision, name)
    check_external_data(bundle, entry)
    return bundle / entry["file"], entry["sha256"]

"""Raw items (texts, optional images) -> model tensors, grouped by modality.

The model runs one modality per call (that is also one exported graph per
modality), so a mixed list is split into its image and text groups and the
results are put back in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .preprocessing import ImagePreprocessor
from .tokenization import ChatFormatter

ImageLike = np.ndarray | Image.Image


@dataclass
class ModelInputs:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None

    def to(self, device: torch.device | str) -> ModelInputs:
        pixels = None if self.pixel_values is None else self.pixel_values.to(device)
        return ModelInputs(self.input_ids.to(device), self.attention_mask.to(device), pixels)


class ItemEncoder:
    """Formats, tokenizes and preprocesses items for `AGFFEmbedder`."""

    def __init__(self, formatter: ChatFormatter, preprocessor: ImagePreprocessor) -> None:
        self.formatter = formatter
        self.preprocessor = preprocessor

    def pixels(self, images: Sequence[ImageLike]) -> np.ndarray:
        size = (self.preprocessor.height, self.preprocessor.width, 3)
        arrays = [
            im if isinstance(im, np.ndarray) and im.shape == size else self.preprocessor.resize(_as_pil(im))
            for im in images
        ]
        return self.preprocessor.normalize(np.stack(arrays))

    def inputs(self, texts: Sequence[str], images: Sequence[ImageLike] | None = None) -> ModelInputs:
        encoded = self.formatter.encode(texts, with_image=images is not None)
        pixels = None if images is None else torch.from_numpy(self.pixels(images))
        return ModelInputs(torch.from_numpy(encoded.input_ids), torch.from_numpy(encoded.attention_mask), pixels)

    def feeds(self, texts: Sequence[str], images: Sequence[ImageLike] | None = None) -> dict[str, np.ndarray]:
        """The same inputs as numpy arrays named like the exported graphs' inputs."""
        inputs = self.inputs(texts, images)
        feeds = {"input_ids": inputs.input_ids.numpy(), "attention_mask": inputs.attention_mask.numpy()}
        if inputs.pixel_values is not None:
            feeds["pixel_values"] = inputs.pixel_values.numpy()
        return feeds

    def embed_mixed(
        self,
        run: Callable[[ModelInputs], torch.Tensor],
        texts: Sequence[str],
        images: Sequence[ImageLike | None],
    ) -> torch.Tensor:
        """Embed items where some carry an image: one call per modality, results in input order."""
        with_image = [i for i, im in enumerate(images) if im is not None]
        text_only = [i for i, im in enumerate(images) if im is None]
        parts: dict[int, torch.Tensor] = {}
        if with_image:
            out = run(self.inputs([texts[i] for i in with_image], [images[i] for i in with_image]))
            parts.update(zip(with_image, out, strict=True))
        if text_only:
            out = run(self.inputs([texts[i] for i in text_only]))
            parts.update(zip(text_only, out, strict=True))
        return torch.stack([parts[i] for i in range(len(texts))])


def _as_pil(image: ImageLike) -> Image.Image:
    return Image.fromarray(image) if isinstance(image, np.ndarray) else image

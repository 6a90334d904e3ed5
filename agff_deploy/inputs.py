"""Raw items (texts, optional images) -> model tensors, grouped by modality.

The model runs one modality per call (that is also one exported graph per
modality), so a mixed list is split into its image and text groups and the
results are put back in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .contract import ATTENTION_MASK, IMAGE_GRID, INPUT_IDS, PIXEL_VALUES
from .feeds import FeedEncoder, ImageLike


@dataclass
class ModelInputs:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> ModelInputs:
        moved = (None if t is None else t.to(device) for t in (self.pixel_values, self.image_grid))
        return ModelInputs(self.input_ids.to(device), self.attention_mask.to(device), *moved)


class ItemEncoder(FeedEncoder):
    """Formats, tokenizes and preprocesses items for `AGFFEmbedder`: the graphs' feeds as torch tensors."""

    def inputs(self, texts: Sequence[str], images: Sequence[ImageLike] | None = None) -> ModelInputs:
        feed = self.feeds(texts, images)
        pixels, grid = (feed.get(spec.name) for spec in (PIXEL_VALUES, IMAGE_GRID))
        return ModelInputs(
            torch.from_numpy(feed[INPUT_IDS.name]),
            torch.from_numpy(feed[ATTENTION_MASK.name]),
            None if pixels is None else torch.from_numpy(pixels),
            None if grid is None else torch.from_numpy(grid),
        )

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

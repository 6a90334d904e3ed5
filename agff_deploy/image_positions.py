"""Where an item's image tokens sit in its sequence, and how per-image-token tensors are put there.

The stock models place image features with `masked_scatter` over the
`<|image_pad|>` ids (a data-dependent check, packed across the batch), and
Qwen3-VL adds its DeepStack features with boolean indexing: neither exports.
Here the k-th `<|image_pad|>` of an item reads row k of that item's padded
`[B, T, D]` features (cumsum + gather + where), so every shape stays static.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImagePositions:
    """`mask [B, L]`: which positions hold an image token; `index [B, L]`: which of the item's image tokens."""

    mask: torch.Tensor
    index: torch.Tensor

    @classmethod
    def of(cls, input_ids: torch.Tensor, image_token_id: int, num_tokens: int) -> ImagePositions:
        """The `<|image_pad|>` positions of `input_ids`, for features of `num_tokens` rows per item."""
        mask = input_ids == image_token_id
        index = (torch.cumsum(mask.to(torch.int64), dim=1) - 1).clamp(0, num_tokens - 1)
        return cls(mask, index)

    def extended(self, length: int) -> ImagePositions:
        """The same positions in a sequence `length` tokens longer (prompts appended hold no image token)."""
        batch = self.mask.shape[0]
        no_image = torch.zeros(batch, length, dtype=self.mask.dtype, device=self.mask.device)
        return ImagePositions(torch.cat([self.mask, no_image], 1), torch.cat([self.index, no_image.long()], 1))

    def gathered(self, features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`[B, T, D]` features -> `[B, L, D]`, row `index` at every position (meaningful where `mask` is set)."""
        index = self.index.unsqueeze(-1).expand(-1, -1, features.shape[-1])
        return torch.gather(features.to(dtype), 1, index)

    def replace(self, states: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """`states [B, L, D]` with image token k's state replaced by feature row k."""
        return torch.where(self.mask.unsqueeze(-1), self.gathered(features, states.dtype), states)

    def add(self, states: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """`states [B, L, D]` with feature row k added to image token k's state (DeepStack), the rest unchanged."""
        return torch.where(self.mask.unsqueeze(-1), states + self.gathered(features, states.dtype), states)

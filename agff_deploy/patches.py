"""Normalised images -> the vision encoder's rows of patches and their grids (numpy; no torch).

Each image becomes `h * w` patches of `3 * p * p` values in the vision tower's
merge-block order (the stock Qwen2-VL processor's order, one temporal slice of
its `3 * 2 * p * p` patch: a still image repeats the frame), and a batch pads
every row to its largest image. The grid `[B, 2]` says how many patch rows and
columns each image has, which is all the graph needs to place and mask them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatchBatch:
    """`pixel_values [B, P, 3*p*p]` float32 and `image_grid [B, 2]` int64 (patch rows, columns per image)."""

    pixel_values: np.ndarray
    image_grid: np.ndarray

    def image_tokens(self, merge_size: int) -> list[int]:
        """Image tokens each image gives the language model: its patches over the merge block."""
        return [int(h * w) // (merge_size * merge_size) for h, w in self.image_grid]

    def __len__(self) -> int:
        return len(self.image_grid)


def image_patches(image: np.ndarray, patch_size: int, merge_size: int) -> np.ndarray:
    """One normalised `[3, H, W]` image -> `[H/p * W/p, 3*p*p]` patches in merge-block order."""
    channels, height, width = image.shape
    step = patch_size * merge_size
    if height % step or width % step:
        raise ValueError(f"image of {height}x{width} pixels is not a multiple of {step} on each side")
    m, p = merge_size, patch_size
    blocks = image.reshape(channels, height // step, m, p, width // step, m, p)
    return blocks.transpose(1, 4, 2, 5, 0, 3, 6).reshape(-1, channels * p * p)


def patch_batch(images: Sequence[np.ndarray], patch_size: int, merge_size: int) -> PatchBatch:
    """Normalised `[3, H, W]` images of any sizes (multiples of patch * merge) -> one padded `PatchBatch`."""
    rows = [image_patches(im, patch_size, merge_size) for im in images]
    pixel_values = np.zeros((len(rows), max(len(r) for r in rows), rows[0].shape[1]), np.float32)
    for i, r in enumerate(rows):
        pixel_values[i, : len(r)] = r
    grid = np.asarray([[im.shape[1] // patch_size, im.shape[2] // patch_size] for im in images], np.int64)
    return PatchBatch(pixel_values, grid)

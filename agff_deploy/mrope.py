"""Qwen2-VL multimodal rotary (M-RoPE) position ids, vectorised.

HF's `get_rope_index` walks each sequence in Python; this computes the same ids
with cumsum/where and integer division so it batches, traces and exports. It
assumes at most one image per sequence, which is what AGFF feeds; each item's
image has its own merged grid.
"""

from __future__ import annotations

import torch


def mrope_position_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    merged_grid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `[3, B, L]` (temporal, height, width) ids and `[B]` next free position.

    `merged_grid [B, 2]` is each item's image size in image tokens (rows, columns); a text item's is unused. Text
    advances every axis by one; an image block starts at the running position s, places its k-th token, at
    row r = k // columns and column c = k % columns, at (s, s + r, s + c) and advances the running position by
    max(rows, columns) after its last token. Padding advances nothing.
    """
    valid = attention_mask.to(torch.bool)
    is_image = (input_ids == image_token_id) & valid
    grid_rows, grid_cols = merged_grid[:, :1], merged_grid[:, 1:]
    index = torch.cumsum(is_image.to(torch.int64), dim=1) - 1
    last = index == grid_rows * grid_cols - 1
    span = torch.maximum(grid_rows, grid_cols).expand_as(index)
    image_advance = torch.where(last, span, torch.zeros_like(span))
    advance = torch.where(is_image, image_advance, torch.ones_like(index)) * valid.to(torch.int64)
    running = torch.cumsum(advance, dim=1)
    base = running - advance
    zero = torch.zeros_like(base)
    height = base + torch.where(is_image, index // grid_cols, zero)
    width = base + torch.where(is_image, index % grid_cols, zero)
    return torch.stack([base, height, width]), running[:, -1]

"""Qwen2-VL multimodal rotary (M-RoPE) position ids, vectorised.

HF's `get_rope_index` walks each sequence in Python; this computes the same ids
with cumsum/gather/where so it batches, traces and exports. It assumes at most
one image per sequence at the model's fixed grid, which is what AGFF feeds.
"""

from __future__ import annotations

import torch


def image_grid_offsets(merged_grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each merged image token, row-major as the LLM receives them."""
    gh, gw = merged_grid
    index = torch.arange(gh * gw)
    return index // gw, index % gw


def mrope_position_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `[3, B, L]` (temporal, height, width) ids and `[B]` next free position.

    Text advances every axis by one; an image block starts at the running
    position s, places token (r, c) at (s, s + r, s + c) and advances the running
    position by max(grid) after its last token. Padding advances nothing.
    """
    valid = attention_mask.to(torch.bool)
    is_image = (input_ids == image_token_id) & valid
    num_tokens = rows.shape[0]
    index = (torch.cumsum(is_image.to(torch.int64), dim=1) - 1).clamp(0, num_tokens - 1)
    span = torch.maximum(rows.max(), cols.max()) + 1
    image_advance = torch.where(index == num_tokens - 1, span, torch.zeros_like(span))
    advance = torch.where(is_image, image_advance, torch.ones_like(index)) * valid.to(torch.int64)
    running = torch.cumsum(advance, dim=1)
    base = running - advance
    zero = torch.zeros_like(base)
    height = base + torch.where(is_image, rows[index], zero)
    width = base + torch.where(is_image, cols[index], zero)
    return torch.stack([base, height, width]), running[:, -1]

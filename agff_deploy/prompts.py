"""Learnable soft prompts appended after a shared prefix.

One sequence holds the prefix once and all K+1 prompts after it. A block mask
lets every prompt see the (unpadded) prefix and itself only, and each prompt's
positions restart where the prefix ends, so the result equals K+1 separate
forward passes while the language model pays for the prefix once.
"""

from __future__ import annotations

import torch
from torch import nn

# What fine prompt k is about when `train.run --prompt-init aspects` starts it from these words.
ASPECT_TEXTS = (
    "the colour",
    "the shape",
    "how many",
    "where",
    "which way it points",
    "what is written",
    "filled or outlined",
    "small or large",
)


class PrefixSharedPrompts(nn.Module):
    """K+1 prompts of m vectors each (index 0 = global) and the attention layout they need."""

    def __init__(self, num_prompts: int, prompt_length: int, hidden_size: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.num_prompts = num_prompts
        self.prompt_length = prompt_length
        self.vectors = nn.Parameter(torch.randn(num_prompts, prompt_length, hidden_size) * init_std)

    @property
    def total_length(self) -> int:
        return self.num_prompts * self.prompt_length

    def embeddings(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """`[B, (K+1)*m, D]`: every prompt, back to back."""
        flat = self.vectors.reshape(1, self.total_length, -1).to(dtype)
        return flat.expand(batch_size, -1, -1)

    def position_ids(self, next_position: torch.Tensor) -> torch.Tensor:
        """`[3, B, (K+1)*m]`: each prompt counts up from the prefix's next free position."""
        offsets = torch.arange(self.prompt_length, device=next_position.device).repeat(self.num_prompts)
        positions = next_position[:, None] + offsets[None, :]
        return positions.unsqueeze(0).expand(3, -1, -1)

    def attention_mask(self, prefix_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive float mask `[B, 1, S, S]` for prefix + prompts (0 = attend).

        A float mask, not a boolean one: HF's eager attention silently ignores
        the structure of boolean 4D masks (measured 9e-3 off), float masks are
        honoured by eager and sdpa alike.
        """
        b, length = prefix_mask.shape
        device = prefix_mask.device
        block = torch.cat(
            [
                torch.zeros(length, dtype=torch.int64, device=device),
                torch.arange(1, self.num_prompts + 1, device=device).repeat_interleave(self.prompt_length),
            ]
        )
        size = block.shape[0]
        key_valid = torch.cat(
            [prefix_mask.to(torch.bool), torch.ones(b, self.total_length, dtype=torch.bool, device=device)], dim=1
        )
        idx = torch.arange(size, device=device)
        causal = idx[None, :] <= idx[:, None]
        same_prompt = (block[None, :] == block[:, None]) & (block[:, None] > 0)
        prefix_key = (block == 0)[None, None, :] & key_valid[:, None, :]
        allowed = (
            causal[None] & (prefix_key | same_prompt[None]) | torch.eye(size, dtype=torch.bool, device=device)[None]
        )
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
        return mask.unsqueeze(1)

    def pool_indices(self, prefix_length: int) -> torch.Tensor:
        """Sequence index of the last token of each prompt."""
        return prefix_length + torch.arange(self.num_prompts) * self.prompt_length + self.prompt_length - 1

"""The pieces every Qwen vision tower shares, on a padded batch of images of any size.

The stock towers pack every image of a batch into one sequence, split the
attention with `cu_seqlens.tolist()` and build rotary positions per image in a
Python loop: none of that batches or exports. Here each image is one row of a
`[B, P, 3*p*p]` batch of patches in the tower's own merge-block order, padded to
the longest image; the patch positions, the rotary angles and a key mask that
hides the padding are computed from each image's patch grid inside the graph.
So one traced graph serves any mix of sizes, TensorRT sees a single dynamic
patch axis, and a real image's result is the stock tower's on that image alone.
Each model family (`agff_deploy.families`) builds its tower from these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def patch_embedding(visual: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """`[B, P, 3*p*p]` patches -> `[B, P, E]` tokens.

    A still image fills both temporal slots of the Conv3d patch embedding with
    the same frame, so the kernel summed over time, applied once, is the stock
    result: a plain MatMul on half the input.
    """
    proj = visual.patch_embed.proj
    weight = proj.weight.sum(dim=2).flatten(1)
    tokens = torch.matmul(patches.to(weight.dtype), weight.t())
    return tokens if proj.bias is None else tokens + proj.bias


def patch_positions(
    grid: torch.Tensor, num_patches: int, merge: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row and column `[B, P]` of each patch slot, and `[B, P]` whether it holds a patch of the image.

    Patch p of an image `grid[b] = (h, w)` sits in merge block p // merge**2 (blocks row-major over the
    image's w / merge block columns) at offset p % merge**2 inside the block, as the stock processor lays it out.
    """
    index = torch.arange(num_patches, device=grid.device).unsqueeze(0)
    height, width = grid[:, :1], grid[:, 1:]
    block, inside = index // (merge * merge), index % (merge * merge)
    block_cols = width // merge
    rows = (block // block_cols) * merge + inside // merge
    cols = (block % block_cols) * merge + inside % merge
    return rows, cols, index < height * width


def rotary_angles(visual: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin `[B, P, head_dim]` from the tower's own rotary module at each patch's (row, col)."""
    b, n = rows.shape
    positions = torch.stack([rows, cols], dim=-1).reshape(b * n, 2)
    probe = torch.zeros(1, dtype=torch.float32, device=rows.device)
    cos, sin = visual.rotary_pos_emb(probe, positions)
    return cos.float().view(b, n, -1), sin.float().view(b, n, -1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def layer_norm_fp32(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm computed in fp32 whatever the weights' dtype, so an fp16 export keeps its norms in fp32."""
    weight, bias = norm.weight.float(), norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).to(x.dtype)


@dataclass(frozen=True)
class PatchLayout:
    """Where each patch slot of a padded batch sits: its rotary angles `[B, 1, P, head_dim]`, the additive key mask
    `[B, 1, 1, P]` that hides padding, and its row and column `[B, P]`."""

    rows: torch.Tensor
    cols: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    key_bias: torch.Tensor

    @classmethod
    def of(cls, visual: nn.Module, grid: torch.Tensor, num_patches: int) -> PatchLayout:
        rows, cols, valid = patch_positions(grid, num_patches, visual.spatial_merge_size)
        cos, sin = (t.unsqueeze(1) for t in rotary_angles(visual, rows, cols))
        key_bias = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
        key_bias = key_bias.masked_fill(~valid, torch.finfo(torch.float32).min)[:, None, None, :]
        return cls(rows, cols, cos, sin, key_bias)


def block_forward(block: nn.Module, x: torch.Tensor, layout: PatchLayout) -> torch.Tensor:
    """One pre-norm vision block (attention with 2-D rotary over the image's own patches, then the MLP)."""
    attn = block.attn
    b, n, e = x.shape
    qkv = attn.qkv(layer_norm_fp32(block.norm1, x)).view(b, n, 3, attn.num_heads, e // attn.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q = (q.float() * layout.cos + _rotate_half(q.float()) * layout.sin).to(v.dtype)
    k = (k.float() * layout.cos + _rotate_half(k.float()) * layout.sin).to(v.dtype)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * attn.scaling + layout.key_bias
    out = torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v).transpose(1, 2).reshape(b, n, e)
    x = x + attn.proj(out)
    return x + block.mlp(layer_norm_fp32(block.norm2, x))


def run_blocks(
    visual: nn.Module, x: torch.Tensor, layout: PatchLayout, recompute: bool = False, taps: Sequence[int] = ()
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The last block's output, and the outputs of the blocks listed in `taps` in their order.

    `recompute` is gradient checkpointing: each block's activations are recomputed in backward instead of stored
    (the trainer's memory saver).
    """
    tapped = {}
    for index, block in enumerate(visual.blocks):
        if recompute:
            x = checkpoint(block_forward, block, x, layout, use_reentrant=False)
        else:
            x = block_forward(block, x, layout)
        if index in taps:
            tapped[index] = x
    return x, [tapped[i] for i in taps]

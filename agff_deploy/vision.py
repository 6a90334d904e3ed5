"""Qwen2-VL vision tower on a real batch axis, for one fixed image size.

The stock tower packs every image into one sequence and splits it again with
`cu_seqlens.tolist()`: a Python loop that neither batches nor exports. Here the
same HF submodules and weights run on `[B, N, E]` with rotary tables built once
for the model's fixed image size, so the code is one traced graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.vision_utils import get_vision_position_ids


def vision_rotary_table(visual: nn.Module, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin `[N, head_dim]` for one image of `grid` patches, in the tower's token order."""
    grid_thw = torch.tensor([[1, grid[0], grid[1]]])
    position_ids = get_vision_position_ids(grid_thw, visual.spatial_merge_size)
    probe = torch.zeros(1, dtype=torch.float32)
    cos, sin = visual.rotary_pos_emb(probe, position_ids)
    return cos.float(), sin.float()


def patch_tokens(visual: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Embed `[B, 3, H, W]` pixels to `[B, N, E]` patch tokens in merge-block order.

    A still image fills both temporal slots of the Conv3d patch embedding with
    the same frame, so summing the kernel over time gives the same result as a
    single Conv2d — one cheap, exportable op instead of a 3D convolution.
    """
    proj = visual.patch_embed.proj
    weight = proj.weight.sum(dim=2)
    x = F.conv2d(pixel_values.to(weight.dtype), weight, stride=proj.stride[1:])
    b, e, gh, gw = x.shape
    m = visual.spatial_merge_size
    x = x.view(b, e, gh // m, m, gw // m, m).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, e)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _layer_norm_fp32(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm computed in fp32 whatever the weights' dtype, so an fp16 export keeps its norms in fp32."""
    weight, bias = norm.weight.float(), norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).to(x.dtype)


def _block_forward(block: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    attn = block.attn
    b, n, e = x.shape
    qkv = attn.qkv(_layer_norm_fp32(block.norm1, x)).view(b, n, 3, attn.num_heads, e // attn.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q = (q.float() * cos + _rotate_half(q.float()) * sin).to(v.dtype)
    k = (k.float() * cos + _rotate_half(k.float()) * sin).to(v.dtype)
    weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float() * attn.scaling, dim=-1)
    out = torch.matmul(weights.to(v.dtype), v).transpose(1, 2).reshape(b, n, e)
    x = x + attn.proj(out)
    return x + block.mlp(_layer_norm_fp32(block.norm2, x))


def encode_images(
    visual: nn.Module, pixel_values: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, recompute: bool = False
) -> torch.Tensor:
    """`[B, 3, H, W]` normalised pixels -> `[B, T, D]` LLM-ready image tokens.

    `recompute` is gradient checkpointing: each block's activations are
    recomputed in backward instead of stored (the trainer's memory saver).
    """
    x = patch_tokens(visual, pixel_values)
    for block in visual.blocks:
        if recompute:
            x = checkpoint(_block_forward, block, x, cos, sin, use_reentrant=False)
        else:
            x = _block_forward(block, x, cos, sin)
    b, n, e = x.shape
    merger = visual.merger
    normed = _layer_norm_fp32(merger.ln_q, x).reshape(b * n // visual.spatial_merge_size**2, merger.hidden_size)
    return merger.mlp(normed).view(b, n // visual.spatial_merge_size**2, -1)

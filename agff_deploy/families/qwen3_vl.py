"""Qwen3-VL (transformers' `qwen3_vl`): the base of Qwen3-VL-Embedding and of most multimodal embedders of 2026.

What differs from Qwen2-VL, and how it runs here on a padded batch:
- Vision: patch 16 (sides are multiples of 32), mean and std 0.5, a bias on the
  patch embedding, and a learned 48 x 48 position table resampled bilinearly
  (corners aligned) to each image's patch grid and added before the blocks, on
  top of the 2-D rotary. The resampling is computed per patch slot from the
  image's grid inside the graph, as the rotary angles are.
- DeepStack: mergers on intermediate blocks (`deepstack_visual_indexes`) whose
  outputs are added to the language model's hidden states at the image
  positions after each of its first layers. The vision encoder returns them as
  one `[B, S, T, D]` tensor beside the image tokens; the language pass runs the
  stock decoder layers one by one and adds tap j after layer j where the
  item's image tokens sit (gather + where: the stock boolean indexing does not
  export).
- Language model: Qwen3 (q/k RMSNorm, head_dim 128, grouped KV heads) with
  interleaved M-RoPE; its position ids are Qwen2-VL's.

Qwen3-VL-Embedding's convention: the instruction ("Represent the user's
input." by default, given a full stop if it ends without punctuation) in the
system turn, the image then the text in the user turn ("NULL" for an item
with neither), the assistant's opening, and the last token's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLModel

from ..errors import InputError
from ..image_positions import ImagePositions
from ..preprocessing import NativeImageSettings
from ..tokenization import CHAT_TEMPLATE
from ..vision import PatchLayout, layer_norm_fp32, patch_embedding, run_blocks
from .family import ModelFamily, PublishedArchitecture, SingleVectorConvention, VisionOutputs

FACTOR = 32  # patch 16 x merge 2: image sides are multiples of this


class Qwen3VL(ModelFamily):
    model_type = "qwen3_vl"
    label = "Qwen3-VL"
    config_class = Qwen3VLConfig
    backbone_class = Qwen3VLModel
    generation_class = Qwen3VLForConditionalGeneration
    # Qwen3-VL-2B-Instruct's preprocessor_config.json (size.shortest_edge / longest_edge)
    image_defaults = NativeImageSettings(
        min_pixels=65536, max_pixels=16777216, patch_size=16, merge_size=2, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    # The published template adds no system turn of its own.
    chat_template = CHAT_TEMPLATE
    single_vector = SingleVectorConvention(
        system_prompt="Represent the user's input.",
        end="",
        empty_text="NULL",
        max_text_tokens=8192,
        pixels=(4 * FACTOR * FACTOR, 1800 * FACTOR * FACTOR),
        punctuate=True,
        matryoshka=True,  # Qwen3-VL-Embedding is trained with Matryoshka representation learning
    )
    # Qwen3-VL-2B-Instruct's published config.json (text and vision dimensions).
    merger_width_key = "out_hidden_size"
    architectures = {
        "qwen3-vl-2b": PublishedArchitecture(
            text={
                "hidden_size": 2048,
                "intermediate_size": 6144,
                "num_hidden_layers": 28,
                "num_attention_heads": 16,
                "num_key_value_heads": 8,
                "head_dim": 128,
                "vocab_size": 151936,
                "max_position_embeddings": 262144,
                "rms_norm_eps": 1e-6,
                "hidden_act": "silu",
                "attention_bias": False,
                "initializer_range": 0.02,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 5000000.0,
                    "mrope_section": [24, 20, 20],
                    "mrope_interleaved": True,
                },
            },
            vision={
                "depth": 24,
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_heads": 16,
                "hidden_act": "gelu_pytorch_tanh",
                "num_position_embeddings": 2304,
                "deepstack_visual_indexes": [5, 11, 17],
                "initializer_range": 0.02,
            },
            tie_word_embeddings=True,
        )
    }

    def reduced(self, name: str, layers: int | None, vision_depth: int | None) -> tuple[dict, dict]:
        """Fewer blocks, with the DeepStack taps moved to the same relative depths of the shorter tower."""
        text, vision = super().reduced(name, layers, vision_depth)
        published = self.architectures[name].vision["depth"]
        taps = [index * vision["depth"] // published for index in vision["deepstack_visual_indexes"]]
        if len(set(taps)) != len(taps):
            raise InputError(
                f"{name}: DeepStack taps {taps} must be distinct blocks of the {vision['depth']}-block vision tower; "
                f"give --vision-depth of at least {len(taps)}"
            )
        vision["deepstack_visual_indexes"] = taps
        return text, vision

    def deepstack_layers(self, base: Mapping[str, Any]) -> int:
        return len(self.config_class.from_dict(dict(base)).vision_config.deepstack_visual_indexes)

    def encode_images(
        self, visual: nn.Module, patches: torch.Tensor, grid: torch.Tensor, recompute: bool = False
    ) -> VisionOutputs:
        layout = PatchLayout.of(visual, grid, patches.shape[1])
        x = patch_embedding(visual, patches)
        x = x + position_embeddings(visual, layout.rows, layout.cols, grid).to(x.dtype)
        x, tapped = run_blocks(visual, x, layout, recompute, list(visual.deepstack_visual_indexes))
        deepstack = [_merged(merger, t) for merger, t in zip(visual.deepstack_merger_list, tapped, strict=True)]
        return _merged(visual.merger, x), torch.stack(deepstack, dim=1)

    def language_states(
        self,
        lm: nn.Module,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        images: ImagePositions,
        deepstack: torch.Tensor | None,
    ) -> torch.Tensor:
        hidden = embeds
        rotary = lm.rotary_emb(hidden, positions)
        taps = 0 if deepstack is None else deepstack.shape[1]
        for index, layer in enumerate(lm.layers):
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary)
            if index < taps:
                hidden = images.add(hidden, deepstack[:, index])
        return lm.norm(hidden)


def position_embeddings(visual: nn.Module, rows: torch.Tensor, cols: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """`[B, P, E]`: the learned square position table resampled bilinearly, corners aligned, to each image's grid,
    read at each patch slot's (row, column), as transformers' `F.interpolate`-equivalent taps do."""
    side = visual.num_grid_per_side
    row_taps, row_weights = _bilinear_taps(rows, grid[:, :1], side)
    col_taps, col_weights = _bilinear_taps(cols, grid[:, 1:], side)
    b, n = rows.shape
    index = (row_taps.unsqueeze(-1) * side + col_taps.unsqueeze(-2)).reshape(b, n, 4)
    weight = (row_weights.unsqueeze(-1) * col_weights.unsqueeze(-2)).reshape(b, n, 4)
    return (visual.pos_embed(index) * weight.unsqueeze(-1).to(visual.pos_embed.weight.dtype)).sum(dim=-2)


def _bilinear_taps(index: torch.Tensor, size: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two table rows `[B, P, 2]` a position `index` of an axis of `size` patches reads, and their weights."""
    source = index.float() * (side - 1) / torch.clamp(size - 1, min=1)
    floor = torch.floor(source)
    offsets = torch.arange(2, device=index.device)
    taps = (floor.long().unsqueeze(-1) + offsets).clamp(0, side - 1)
    weights = (1 - (source.unsqueeze(-1) - floor.unsqueeze(-1) - offsets).abs()).clamp(min=0)
    return taps, weights


def _merged(merger: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`[B, P, E]` -> `[B, P / 4, D]`: each 2 x 2 block of patches merged (normed before or after the shuffle)."""
    b, n, _ = x.shape
    blocks = (b, n * x.shape[-1] // merger.hidden_size, merger.hidden_size)
    if merger.use_postshuffle_norm:
        normed = layer_norm_fp32(merger.norm, x.reshape(blocks))
    else:
        normed = layer_norm_fp32(merger.norm, x).reshape(blocks)
    return merger.linear_fc2(merger.act_fn(merger.linear_fc1(normed)))


QWEN3_VL = Qwen3VL()

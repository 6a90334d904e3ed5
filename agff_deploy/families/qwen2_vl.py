"""Qwen2-VL (transformers' `qwen2_vl`): patch 14, CLIP normalisation, 2-D rotary vision tower, M-RoPE language model.

The base of most open multimodal embedders of 2024-2025 (GME, VLM2Vec, UniME).
Its published single-vector embedders follow GME: the default system turn,
`<|endoftext|>` after the assistant's opening, read out at that token.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLModel

from ..image_positions import ImagePositions
from ..preprocessing import CLIP_MEAN, CLIP_STD, NativeImageSettings
from ..tokenization import CHAT_TEMPLATE
from ..vision import PatchLayout, layer_norm_fp32, patch_embedding, run_blocks
from .family import ModelFamily, PublishedArchitecture, SingleVectorConvention, VisionOutputs

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


class Qwen2VL(ModelFamily):
    model_type = "qwen2_vl"
    label = "Qwen2-VL"
    config_class = Qwen2VLConfig
    backbone_class = Qwen2VLModel
    generation_class = Qwen2VLForConditionalGeneration
    # transformers' Qwen2VLImageProcessor defaults
    image_defaults = NativeImageSettings(
        min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, merge_size=2, mean=CLIP_MEAN, std=CLIP_STD
    )
    # The published template adds this system turn when a conversation has none.
    chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n"
        + DEFAULT_SYSTEM_PROMPT
        + "<|im_end|>\n{% endif %}"
    ) + CHAT_TEMPLATE
    single_vector = SingleVectorConvention(
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        end="<|endoftext|>",
        empty_text="",
        max_text_tokens=512,
        pixels=None,
        punctuate=False,
        matryoshka=False,
    )
    # Qwen2-VL-2B-Instruct's published config.json (text and vision dimensions).
    merger_width_key = "hidden_size"
    architectures = {
        "qwen2-vl-2b": PublishedArchitecture(
            text={
                "hidden_size": 1536,
                "intermediate_size": 8960,
                "num_hidden_layers": 28,
                "num_attention_heads": 12,
                "num_key_value_heads": 2,
                "vocab_size": 151936,
                "max_position_embeddings": 32768,
                "rms_norm_eps": 1e-6,
                "hidden_act": "silu",
                "initializer_range": 0.02,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            },
            vision={"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16},
            tie_word_embeddings=True,
        )
    }

    def reduced(self, name: str, layers: int | None, vision_depth: int | None) -> tuple[dict, dict]:
        text, vision = super().reduced(name, layers, vision_depth)
        if layers is not None:
            text["max_window_layers"] = layers
        return text, vision

    def saved_name(self, name: str) -> str:
        """Qwen2-VL checkpoints keep the layout of the transformers release they came with."""
        for live, saved in (("model.language_model.", "model."), ("model.visual.", "visual.")):
            if name.startswith(live):
                return saved + name[len(live) :]
        return name

    def encode_images(
        self, visual: nn.Module, patches: torch.Tensor, grid: torch.Tensor, recompute: bool = False
    ) -> VisionOutputs:
        layout = PatchLayout.of(visual, grid, patches.shape[1])
        x = patch_embedding(visual, patches)
        x, _ = run_blocks(visual, x, layout, recompute)
        b, n, _ = x.shape
        merger = visual.merger
        normed = layer_norm_fp32(merger.ln_q, x).reshape(b, n // visual.spatial_merge_size**2, merger.hidden_size)
        return merger.mlp(normed), None

    def language_states(
        self,
        lm: nn.Module,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        images: ImagePositions,
        deepstack: torch.Tensor | None,
    ) -> torch.Tensor:
        return lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state


QWEN2_VL = Qwen2VL()

"""What the toolkit needs to know about one generation of Qwen vision-language model, behind one interface.

A family says how its vision tower and language model run on a padded batch
(the code the trainer optimises and the exporter traces), which transformers
classes hold its weights, what its processor and chat template default to,
how its published single-vector embedders format and pool an item, and which
published architectures the base writer can lay out. Everything else (the
AGFF prompts, the fused similarity, export, gate, runtime) is shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..attention import ATTENTION
from ..image_positions import ImagePositions
from ..preprocessing import NativeImageSettings

# Image features `[B, T, D]` and, for a family with DeepStack, `[B, S, T, D]` per-tap features (else None).
VisionOutputs = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class SingleVectorConvention:
    """How a family's published single-vector embedders (GME, Qwen3-VL-Embedding) turn an item into one vector:
    the system turn holds the instruction, the user turn the image then the text, and the embedding is the
    L2-normalised last hidden state of the last token, after the assistant's opening and `end`."""

    system_prompt: str  # the task instruction when none is given
    end: str  # appended after the assistant's opening; the token read out
    empty_text: str  # what a text-only item with no text becomes
    max_text_tokens: int
    pixels: tuple[int, int] | None  # the (min, max) pixels images are resized within; None: the folder's processor's
    punctuate: bool  # a task instruction that does not end in punctuation gets a full stop
    matryoshka: bool  # trained so that the leading dimensions of an embedding are an embedding (MRL)


@dataclass(frozen=True)
class PublishedArchitecture:
    """A published checkpoint's dimensions (its config.json), laid out by `python -m agff_deploy.base`."""

    text: Mapping[str, Any]
    vision: Mapping[str, Any]
    tie_word_embeddings: bool


class ModelFamily(ABC):
    model_type: ClassVar[str]  # config.json's model_type
    label: ClassVar[str]  # how people write it
    config_class: ClassVar[type]  # the transformers config, model and save_pretrained classes
    backbone_class: ClassVar[type]
    generation_class: ClassVar[type]
    image_defaults: ClassVar[NativeImageSettings]  # the published processor's settings, for a folder without one
    chat_template: ClassVar[str]  # the published chat template's behaviour, for a folder without one
    single_vector: ClassVar[SingleVectorConvention]
    architectures: ClassVar[Mapping[str, PublishedArchitecture]]
    merger_width_key: ClassVar[str]  # the vision config key of the merger's output width

    def build(self, base: Mapping[str, Any]) -> nn.Module:
        """A randomly initialised backbone of the config dict `base` (the caller seeds torch)."""
        return self.backbone_class._from_config(self.config_class.from_dict(dict(base)), attn_implementation=ATTENTION)

    def load(self, folder: Path) -> nn.Module:
        """The backbone of a local `save_pretrained` folder, in fp32; no hub access.

        The backbone class, not the generation one: an embedder needs no output layer, and published embedders
        may ship none (Qwen3-VL-Embedding-8B's config says untied, its shards hold no `lm_head`), which the
        generation class would fill with random values in memory the size of the embedding table.
        """
        return self.backbone_class.from_pretrained(
            folder, attn_implementation=ATTENTION, local_files_only=True, dtype=torch.float32
        )

    def config(self, text: Mapping[str, Any], vision: Mapping[str, Any], tokens: Mapping[str, int], tie: bool):
        """The transformers config of a model with these text and vision settings (the family's own keys) and
        special-token ids; the settings every model of the family shares (patch and merge sizes, the tower's
        output width) are filled in."""
        config = self.config_class(
            text_config=dict(text),
            vision_config=self.vision_config(vision, int(text["hidden_size"])),
            tie_word_embeddings=tie,
            **tokens,
        )
        config.architectures = [self.generation_class.__name__]
        return config

    def vision_config(self, vision: Mapping[str, Any], text_width: int) -> dict[str, Any]:
        """`vision` completed with what the family fixes: its patch size, merge 2, one still frame repeated over two
        temporal slots, and the merger's output width (the language model's)."""
        patch = self.image_defaults.patch_size
        fixed = {"patch_size": patch, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
        return {**fixed, **vision, self.merger_width_key: text_width}

    def reduced(self, name: str, layers: int | None, vision_depth: int | None) -> tuple[dict, dict]:
        """Published architecture `name` with fewer blocks (every width kept): its text and vision settings."""
        arch = self.architectures[name]
        text, vision = dict(arch.text), dict(arch.vision)
        if layers is not None:
            text["num_hidden_layers"] = layers
        if vision_depth is not None:
            vision["depth"] = vision_depth
        return text, vision

    def saved_name(self, name: str) -> str:
        """A parameter's name in `XForConditionalGeneration` -> the name published checkpoints store it under."""
        return name

    def deepstack_layers(self, base: Mapping[str, Any]) -> int:
        """How many vision taps feed the language model's first layers (DeepStack); 0 for families without."""
        return 0

    @abstractmethod
    def encode_images(
        self, visual: nn.Module, patches: torch.Tensor, grid: torch.Tensor, recompute: bool = False
    ) -> VisionOutputs:
        """`[B, P, 3*p*p]` normalised patches of images with patch grids `[B, 2]` -> LLM-ready image tokens
        `[B, P / merge**2, D]` (each image's h*w / merge**2 tokens first, row-major over its merged grid, padding
        after) and the DeepStack taps, if the family has them."""

    @abstractmethod
    def language_states(
        self,
        lm: nn.Module,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        images: ImagePositions,
        deepstack: torch.Tensor | None,
    ) -> torch.Tensor:
        """The language model's last hidden states `[B, L, D]` for input embeddings under an additive float mask
        `[B, 1, L, L]` and M-RoPE positions `[3, B, L]`; `deepstack [B, S, T, D]` (None for text) goes to the
        image positions after the first S layers."""

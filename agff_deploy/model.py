"""AGFF-Embed: a Qwen vision-language model that emits one global and K fine-grained embeddings per item.

The module the trainer optimises is the module the exporter traces: images of
any size as padded rows of patches, vision blocks on a batch axis, gather/where
image merge, vectorised M-RoPE, and K+1 prompts sharing one prefix pass. No
`.tolist()`, no Python loops over data. How the vision tower and the language
model of each Qwen generation run is its family's (`agff_deploy.families`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import AGFFConfig
from .families import VisionOutputs, folder_family
from .image_positions import ImagePositions
from .mrope import mrope_position_ids
from .prompts import PrefixSharedPrompts
from .similarity import FusedSimilarity
from .weights import weight_files


def load_base_folder(path: str | Path) -> nn.Module:
    """The backbone (vision tower and language model) of a local `save_pretrained` folder of a supported family;
    no hub access.

    The model type and the weight files are checked first, so an unsupported model or a missing or truncated shard
    is named in one line rather than surfacing as a loader error deep inside transformers.
    """
    folder = Path(path)
    family = folder_family(folder)
    weight_files(folder)
    return family.load(folder)


def causal_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive float mask `[B, 1, L, L]`: each token sees the valid tokens up to itself.

    Built here rather than left to transformers: with our registered attention function a 2D
    padding mask reaches the attention unexpanded, and the pass would see the future.
    """
    idx = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    causal = idx[None, :] <= idx[:, None]
    allowed = causal[None] & attention_mask.to(torch.bool)[:, None, :] | torch.eye(
        idx.shape[0], dtype=torch.bool, device=idx.device
    )
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


MIN_TEMPERATURE = 0.01  # the learned temperature's floor: below it one pair's score swamps a batch's softmax


class AGFFEmbedder(nn.Module):
    """Image, text or image+instruction -> `[B, K+1, D]` L2-normalised embeddings."""

    def __init__(self, config: AGFFConfig, base: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.family = config.family
        self.mllm = base if base is not None else self.family.build(config.base)
        self.image_token_id = int(self.mllm.config.image_token_id)
        self.recompute_vision = False
        self.prompts = PrefixSharedPrompts(config.num_prompts, config.prompt_length, config.hidden_size)
        self.fusion = FusedSimilarity(config.t_in, config.t_f, config.pattern_bias)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(config.temperature)))
        self._init_prompts()

    def _init_prompts(self) -> None:
        """Start prompts at the scale of real token embeddings so they matter from step one.

        Skipped when the model is built empty to receive a checkpoint's weights.
        """
        if self.prompts.vectors.is_meta:
            return
        with torch.no_grad():
            std = self.mllm.language_model.embed_tokens.weight.std()
            self.prompts.vectors.normal_(0.0, float(std))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(min=MIN_TEMPERATURE)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute every vision and language block in backward instead of storing its activations.

        At 2B parameters and 448 px the stored activations, not the weights, are what
        outgrow memory; this trades one extra forward for them.
        """
        enable = getattr(self.mllm, "activation_checkpointing_enable", None)  # transformers >= 5.20
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.mllm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.recompute_vision = True

    def image_tokens(self, pixel_values: torch.Tensor, image_grid: torch.Tensor) -> VisionOutputs:
        """`[B, P, 3*p*p]` patches of images with patch grids `[B, 2]` -> `[B, P / 4, D]` image tokens, and the
        `[B, S, P / 4, D]` DeepStack taps of a family that has them (else None)."""
        recompute = self.recompute_vision and self.training and torch.is_grad_enabled()
        return self.family.encode_images(self.mllm.visual, pixel_values, image_grid, recompute)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Right-padded `[B, L]` tokens (+ `[B, P, 3*p*p]` patches, `[B, 2]` patch grids) -> `[B, K+1, D]`: the
        vision encoder, then the language encoder, as the exported pipelines run them."""
        features, deepstack = (None, None) if pixel_values is None else self.image_tokens(pixel_values, image_grid)
        return self.encode_tokens(input_ids, attention_mask, features, image_grid, deepstack)

    def encode_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_features: torch.Tensor | None = None,
        image_grid: torch.Tensor | None = None,
        deepstack_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The language encoder: tokens (+ `[B, T, D]` image features for the `<|image_pad|>` ids, from images of
        patch grids `[B, 2]`, and their `[B, S, T, D]` DeepStack taps) -> `[B, K+1, D]`.

        One pass over the shared prefix and K+1 prompts (or, with last-token pooling, the last token's state as the
        one embedding). It serves text and image items alike, which is why a bundle stores the language model once.
        """
        embeds, images = self.token_embeddings(input_ids, image_features)
        prefix_positions, next_position = mrope_position_ids(
            input_ids, attention_mask, self.image_token_id, self.merged_grid(image_grid, input_ids)
        )
        if self.config.pooling == "last-token":
            mask = causal_attention_mask(attention_mask, embeds.dtype)
            hidden = self.language_states(embeds, mask, prefix_positions, images, deepstack_features)
            last = (attention_mask.sum(dim=1) - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
            pooled = torch.gather(hidden, 1, last)
            if self.config.embedding_dim is not None:  # Matryoshka: the leading dimensions, renormalised
                pooled = pooled[..., : self.config.embedding_dim]
            return F.normalize(pooled.float(), dim=-1)
        batch, length = input_ids.shape
        sequence = torch.cat([embeds, self.prompts.embeddings(batch, embeds.dtype)], dim=1)
        positions = torch.cat([prefix_positions, self.prompts.position_ids(next_position)], dim=2)
        mask = self.prompts.attention_mask(attention_mask, sequence.dtype)
        images = images.extended(self.prompts.total_length)
        hidden = self.language_states(sequence, mask, positions, images, deepstack_features)
        pooled = hidden[:, self.prompts.pool_indices(length).to(hidden.device)]
        return F.normalize(pooled.float(), dim=-1)

    def language_states(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        images: ImagePositions,
        deepstack: torch.Tensor | None,
    ) -> torch.Tensor:
        return self.family.language_states(self.mllm.language_model, embeds, mask, positions, images, deepstack)

    def merged_grid(self, image_grid: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:
        """`[B, 2]` image size in image tokens; a text batch (no grid) gets 1 x 1, which no token reads."""
        if image_grid is None:
            return torch.ones(input_ids.shape[0], 2, dtype=torch.int64, device=input_ids.device)
        return image_grid // self.config.merge_size

    def token_embeddings(
        self, input_ids: torch.Tensor, image_features: torch.Tensor | None
    ) -> tuple[torch.Tensor, ImagePositions]:
        """`[B, L, D]` input embeddings with the image features in place of the `<|image_pad|>` ids, and where
        those are."""
        embeds = self.mllm.language_model.embed_tokens(input_ids)
        tokens = 1 if image_features is None else image_features.shape[1]
        images = ImagePositions.of(input_ids, self.image_token_id, tokens)
        if image_features is not None:
            embeds = images.replace(embeds, image_features)
        return embeds, images

    def token_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`[B, L, D]` last hidden state of every token under a plain causal mask, no prompts: the generative
        pass that next-token pretraining (`train.generative`) trains the backbone with."""
        positions, _ = mrope_position_ids(
            input_ids, attention_mask, self.image_token_id, self.merged_grid(image_grid, input_ids)
        )
        features, deepstack = (None, None) if pixel_values is None else self.image_tokens(pixel_values, image_grid)
        embeds, images = self.token_embeddings(input_ids, features)
        mask = causal_attention_mask(attention_mask, embeds.dtype)
        return self.language_states(embeds, mask, positions, images, deepstack)

    def similarity(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.fusion(queries, candidates)

"""AGFF-Embed: a Qwen2-VL that emits one global and K fine-grained embeddings per item.

The module the trainer optimises is the module the exporter traces: images of
any size as padded rows of patches, vision blocks on a batch axis, gather/where
image merge, vectorised M-RoPE, and K+1 prompts sharing one prefix pass. No
`.tolist()`, no Python loops over data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLModel

from .attention import ATTENTION
from .config import AGFFConfig
from .errors import ArtifactError, MissingFileError
from .mrope import mrope_position_ids
from .prompts import PrefixSharedPrompts
from .similarity import FusedSimilarity
from .vision import encode_images
from .weights import weight_files

SUPPORTED_MODEL_TYPES = ("qwen2_vl",)


def build_base_model(base: dict) -> Qwen2VLModel:
    """A randomly initialised Qwen2-VL backbone (the caller seeds torch)."""
    model_type = base.get("model_type", "qwen2_vl")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ArtifactError(
            f"base model_type {model_type!r} is not supported; AGFF-Embed builds on {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    config = Qwen2VLConfig.from_dict(base)
    return Qwen2VLModel._from_config(config, attn_implementation=ATTENTION)


def load_base_folder(path: str | Path) -> Qwen2VLModel:
    """The Qwen2-VL backbone of a local checkpoint folder (`save_pretrained` layout); no hub access.

    The weight files are checked first, so a missing or truncated shard is named rather than
    surfacing as a loader error deep inside transformers.
    """
    folder = Path(path)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingFileError(
            f"{config_path} not found: --base takes a local Qwen2-VL folder written by save_pretrained"
        )
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ArtifactError(
            f"{config_path}: model_type {model_type!r} is not supported; AGFF-Embed builds on "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} checkpoints"
        )
    weight_files(folder)
    full = Qwen2VLForConditionalGeneration.from_pretrained(
        folder, attn_implementation=ATTENTION, local_files_only=True, dtype=torch.float32
    )
    return full.model


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

    def __init__(self, config: AGFFConfig, base: Qwen2VLModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.mllm = base if base is not None else build_base_model(config.base)
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

    def image_tokens(self, pixel_values: torch.Tensor, image_grid: torch.Tensor) -> torch.Tensor:
        """`[B, P, 3*p*p]` patches of images with patch grids `[B, 2]` -> `[B, P / 4, D]` image tokens."""
        recompute = self.recompute_vision and self.training and torch.is_grad_enabled()
        return encode_images(self.mllm.visual, pixel_values, image_grid, recompute)

    def merge_image_tokens(self, embeds: torch.Tensor, input_ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Place image token k at the k-th `<|image_pad|>` (cumsum + gather + where)."""
        is_image = input_ids == self.image_token_id
        index = (torch.cumsum(is_image.to(torch.int64), dim=1) - 1).clamp(0, image.shape[1] - 1)
        gathered = torch.gather(image.to(embeds.dtype), 1, index.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
        return torch.where(is_image.unsqueeze(-1), gathered, embeds)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Right-padded `[B, L]` tokens (+ `[B, P, 3*p*p]` patches, `[B, 2]` patch grids) -> `[B, K+1, D]`: the
        vision encoder, then the language encoder, as the exported pipelines run them."""
        features = None if pixel_values is None else self.image_tokens(pixel_values, image_grid)
        return self.encode_tokens(input_ids, attention_mask, features, image_grid)

    def encode_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_features: torch.Tensor | None = None,
        image_grid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The language encoder: tokens (+ `[B, T, D]` image features for the `<|image_pad|>` ids, from images of
        patch grids `[B, 2]`) -> `[B, K+1, D]`.

        One pass over the shared prefix and K+1 prompts (or, with last-token pooling, the last token's state as the
        one embedding). It serves text and image items alike, which is why a bundle stores the language model once.
        """
        lm = self.mllm.language_model
        embeds = self.token_embeddings(input_ids, image_features)
        prefix_positions, next_position = mrope_position_ids(
            input_ids, attention_mask, self.image_token_id, self.merged_grid(image_grid, input_ids)
        )
        if self.config.pooling == "last-token":
            mask = causal_attention_mask(attention_mask, embeds.dtype)
            hidden = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=prefix_positions).last_hidden_state
            last = (attention_mask.sum(dim=1) - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
            return F.normalize(torch.gather(hidden, 1, last).float(), dim=-1)
        batch, length = input_ids.shape
        sequence = torch.cat([embeds, self.prompts.embeddings(batch, embeds.dtype)], dim=1)
        positions = torch.cat([prefix_positions, self.prompts.position_ids(next_position)], dim=2)
        mask = self.prompts.attention_mask(attention_mask, sequence.dtype)
        hidden = lm(inputs_embeds=sequence, attention_mask=mask, position_ids=positions).last_hidden_state
        pooled = hidden[:, self.prompts.pool_indices(length).to(hidden.device)]
        return F.normalize(pooled.float(), dim=-1)

    def merged_grid(self, image_grid: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:
        """`[B, 2]` image size in image tokens; a text batch (no grid) gets 1 x 1, which no token reads."""
        if image_grid is None:
            return torch.ones(input_ids.shape[0], 2, dtype=torch.int64, device=input_ids.device)
        return image_grid // self.config.merge_size

    def token_embeddings(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """`[B, L, D]` input embeddings with the image features in place of the `<|image_pad|>` ids."""
        embeds = self.mllm.language_model.embed_tokens(input_ids)
        if image_features is not None:
            embeds = self.merge_image_tokens(embeds, input_ids, image_features)
        return embeds

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
        features = None if pixel_values is None else self.image_tokens(pixel_values, image_grid)
        embeds = self.token_embeddings(input_ids, features)
        mask = causal_attention_mask(attention_mask, embeds.dtype)
        lm = self.mllm.language_model
        return lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state

    def similarity(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.fusion(queries, candidates)

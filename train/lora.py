"""LoRA (peft) on the language model of a real checkpoint, merged back for saving.

Checkpoints always hold plain merged weights, so export and runtime never need
peft; only training does.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def add_lora(model: nn.Module, rank: int) -> None:
    """Freeze the backbone and train rank-`rank` adapters on its language model (prompts and fusion stay trainable)."""
    from peft import LoraConfig, inject_adapter_in_model

    for param in model.mllm.parameters():
        param.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, lora_dropout=0.0)
    inject_adapter_in_model(config, model.mllm.language_model)


def lora_merged_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every weight under its original name with each adapter folded into its base weight.

    A generator, so a 2B model's merged matrices are made one at a time as the
    checkpoint writer asks for them, never all at once beside the live model.
    """
    modules = dict(model.named_modules())
    for name, value in model.state_dict().items():
        if "lora_" in name:
            continue
        if ".base_layer." in name:
            owner = name.split(".base_layer.")[0]
            if name.endswith("weight"):
                with torch.no_grad():
                    value = value + modules[owner].get_delta_weight("default")
            name = name.replace(".base_layer.", ".")
        yield name, value.detach()

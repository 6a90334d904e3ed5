"""Eager attention whose softmax always runs in fp32, registered with transformers.

HF's eager attention asks for an fp32 softmax, but the exported graph still
applies Softmax to fp16 scores and casts afterwards. Upcasting the scores
before the mask and softmax keeps an fp16 export's softmax in fp32 (what
TensorRT strongly-typed builds then honour) and leaves fp32 results unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.models.qwen2_vl.modeling_qwen2_vl import repeat_kv

ATTENTION = "agff_eager"


def fp32_softmax_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling
    if attention_mask is not None:
        scores = scores + attention_mask.float()
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTENTION, fp32_softmax_attention)

"""Built-in model presets: Qwen2-VL and Qwen3-VL architectures at sizes that train on a laptop CPU.

`tiny` is for tests (seconds); `demo` is the default and learns the built-in
scenes in a few minutes on two cores (measured: larger models and 224 px
learned more slowly on the same time budget). `tiny-qwen3-vl` is `tiny` on the
Qwen3-VL architecture (patch 16, a learned position table, two DeepStack taps).
A preset's vision settings are in its family's own config keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from .config import AGFFConfig
from .errors import InputError
from .scenes import vocabulary_corpus
from .tokenization import special_token_ids, train_bpe_tokenizer

if TYPE_CHECKING:
    from .families import ModelFamily

LOCAL_VOCAB_SIZE = 512

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "mrope_section": [1, 1, 2]},
        "vision": {"embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2},
        "agff": {"num_fine": 2, "prompt_length": 2, "image_size": (56, 56), "max_text_tokens": 48},
    },
    "demo": {
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 4, "mrope_section": [2, 3, 3]},
        "vision": {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 2},
        "agff": {"num_fine": 8, "prompt_length": 1, "image_size": (112, 112), "max_text_tokens": 64},
    },
    "tiny-qwen3-vl": {
        "family": "qwen3_vl",
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "head_dim": 8, "mrope_section": [2, 1, 1]},
        "vision": {"hidden_size": 32, "intermediate_size": 64, "depth": 2, "num_heads": 2,
                   "num_position_embeddings": 16, "deepstack_visual_indexes": [0, 1]},
        "agff": {"num_fine": 2, "prompt_length": 2, "image_size": (64, 64), "max_text_tokens": 48},
    },
}  # fmt: skip


def local_tokenizer() -> Tokenizer:
    """The byte-level BPE tokenizer, with Qwen2-VL's special tokens, of every model built here (no hub)."""
    return train_bpe_tokenizer(vocabulary_corpus(), LOCAL_VOCAB_SIZE)


def preset_family(spec: Mapping[str, Any]) -> ModelFamily:
    """The family a preset's architecture belongs to (Qwen2-VL unless it names another)."""
    from .families import FAMILIES  # the model code: imported only when a preset is built

    return FAMILIES[spec.get("family", "qwen2_vl")]


def base_config(spec: dict[str, Any], tokenizer: Tokenizer) -> dict[str, Any]:
    """The base config dict of a preset's `spec` in its family, with this tokenizer's vocabulary and token ids."""
    family = preset_family(spec)
    text = dict(spec["text"])
    mrope_section = text.pop("mrope_section")
    ids = special_token_ids(tokenizer)
    text.update(
        vocab_size=tokenizer.get_vocab_size(),
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
    )
    token_ids = {
        k: ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    }
    vision = family.vision_config(spec["vision"], text["hidden_size"])
    return {"model_type": family.model_type, "text_config": text, "vision_config": vision, **token_ids}


def preset_config(
    preset: str,
    tokenizer: Tokenizer,
    presets: Mapping[str, dict[str, Any]] = PRESETS,
    base: dict[str, Any] | None = None,
    **overrides: Any,
) -> AGFFConfig:
    """The config of `preset` from `presets` (the built-in ones unless a caller, such as bench/, brings its own): its
    AGFF settings on its own base architecture, or on `base` (a base folder's config) when given."""
    if preset not in presets:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    spec = presets[preset]
    fields = dict(spec["agff"], preset=preset)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return AGFFConfig(base=base or base_config(spec, tokenizer), **fields)

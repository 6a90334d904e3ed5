"""A published single-vector Qwen2-VL embedder, read straight from its `save_pretrained` folder.

GME's convention (gme-Qwen2-VL): the item as a chat with a system turn holding
the instruction ("You are a helpful assistant." by default), the user turn
(`<|vision_start|><|image_pad|><|vision_end|>` + text), the assistant's opening
and `<|endoftext|>`; the embedding is that last token's last hidden state,
L2-normalised, with the folder's own image processor settings. As an AGFF model
it is K = 0 with last-token pooling, so it exports, gates and runs like any
other: no AGFF training is involved.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from .chat_format import DEFAULT_SYSTEM_PROMPT, read_chat_template, render_chat_format
from .config import AGFFConfig
from .model import AGFFEmbedder, load_base_folder
from .preprocessing import NativeImageSettings
from .tokenization import TOKENIZER_FILE

END_TOKEN = "<|endoftext|>"  # what the last-token convention reads the embedding out at
DEFAULT_MAX_TEXT_TOKENS = 512


def single_vector_embedder(
    folder: str | Path, system_prompt: str = DEFAULT_SYSTEM_PROMPT, max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS
) -> tuple[AGFFEmbedder, Tokenizer, list[str]]:
    """The folder's model as a last-token embedder, its tokenizer, and notes on settings it lacked (defaults used)."""
    folder = Path(folder)
    base = load_base_folder(folder)
    settings, notes = NativeImageSettings.from_preprocessor_config(folder)
    template, template_notes = read_chat_template(folder)
    chat = render_chat_format(template, folder, system=system_prompt, end=END_TOKEN)
    config = AGFFConfig(
        base=base.config.to_dict(),
        num_fine=0,
        max_text_tokens=max_text_tokens,
        image_resize="native",
        image_settings={k: v for k, v in settings.to_dict().items() if k not in _BASE_OWNED},
        chat_head=chat.head,
        chat_tail=chat.tail,
        pooling="last-token",
        preset="last-token",
        base_path=str(folder),
    )
    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    return AGFFEmbedder(config, base).eval(), tokenizer, notes + template_notes


# Image settings the base's own config fixes (AGFFConfig.native_settings takes them from it).
_BASE_OWNED = ("patch_size", "merge_size", "temporal_patch_size")

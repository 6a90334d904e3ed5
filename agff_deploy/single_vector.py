"""A published single-vector embedder, read straight from its `save_pretrained` folder.

Each family's published embedders follow one convention (`SingleVectorConvention`):
GME on Qwen2-VL (system turn "You are a helpful assistant.", `<|endoftext|>`
after the assistant's opening, read out there) and Qwen3-VL-Embedding on
Qwen3-VL (the instruction "Represent the user's input." in the system turn,
"NULL" for an empty item, the last token of the assistant's opening read out,
images within 4 x 32 x 32 .. 1800 x 32 x 32 pixels). The item is the user
turn, image then text, in the folder's own chat template; the embedding is
that last token's last hidden state, L2-normalised, optionally cut to its
leading dimensions (Matryoshka). As an AGFF model it is K = 0 with last-token
pooling, so it exports, gates and runs like any other: no AGFF training is
involved.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tokenizers import Tokenizer

from .chat_format import read_chat_template, render_chat_format
from .config import AGFFConfig
from .families import folder_family
from .model import AGFFEmbedder, load_base_folder
from .preprocessing import NativeImageSettings
from .tokenization import TOKENIZER_FILE


def single_vector_embedder(
    folder: str | Path,
    system_prompt: str | None = None,
    max_text_tokens: int | None = None,
    dim: int | None = None,
) -> tuple[AGFFEmbedder, Tokenizer, list[str]]:
    """The folder's model as a last-token embedder, its tokenizer, and notes on settings it lacked (defaults used).

    `system_prompt` (the default task instruction, which each call may replace) and `max_text_tokens` default to
    the family's convention; `dim` keeps the leading dimensions.
    The config is built and checked before the weights load, so a bad flag costs no load of a 2B model.
    """
    folder = Path(folder)
    family = folder_family(folder)
    convention = family.single_vector
    settings, notes = NativeImageSettings.from_preprocessor_config(folder, family.image_defaults, family.label)
    if convention.pixels is not None:
        settings = dataclasses.replace(settings, min_pixels=convention.pixels[0], max_pixels=convention.pixels[1])
    template, template_notes = read_chat_template(folder, family)
    task = convention.system_prompt if system_prompt is None else system_prompt
    chat = render_chat_format(template, folder, system=task, end=convention.end, punctuate=convention.punctuate)
    config = AGFFConfig(
        base=family.config_class.from_pretrained(folder).to_dict(),
        num_fine=0,
        max_text_tokens=max_text_tokens or convention.max_text_tokens,
        image_resize="native",
        image_settings={k: v for k, v in settings.to_dict().items() if k not in _BASE_OWNED},
        chat_head=chat.head,
        chat_tail=chat.tail,
        task=chat.task.to_json() if chat.task else None,
        pooling="last-token",
        embedding_dim=dim,
        empty_text=convention.empty_text,
        matryoshka=convention.matryoshka,
        preset="last-token",
        base_path=str(folder),
    )
    base = load_base_folder(folder)
    config.base = base.config.to_dict()
    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    return AGFFEmbedder(config, base).eval(), tokenizer, notes + template_notes


# Image settings the base's own config fixes (AGFFConfig.native_settings takes them from it).
_BASE_OWNED = ("patch_size", "merge_size", "temporal_patch_size")

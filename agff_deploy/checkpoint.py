"""The checkpoint folder: safe formats only (safetensors + JSON), written atomically.

    ckpt/
      agff_config.json        AGFFConfig, including the base Qwen2-VL config
      model.safetensors       every weight: backbone, prompts, fusion, temperature
      tokenizer.json          + tokenizer_config.json (chat template)
      preprocessor_config.json

Files are written to a temporary folder first and moved into place one by one
with `os.replace`, so a reader never sees a half-written file.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from .config import CONFIG_FILE, AGFFConfig
from .inputs import ItemEncoder
from .model import AGFFEmbedder
from .preprocessing import ImagePreprocessor
from .tokenization import TOKENIZER_FILE, ChatFormatter, write_tokenizer_files

WEIGHTS_FILE = "model.safetensors"


def write_atomically(folder: str | Path, write: Callable[[Path], None], last: str | None = None) -> None:
    """Let `write` fill a temporary folder, then move each file into `folder` (`last` moved last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp:
        write(Path(tmp))
        names = sorted(p.name for p in Path(tmp).iterdir())
        if last in names:
            names.remove(last)
            names.append(last)
        for name in names:
            os.replace(Path(tmp) / name, folder / name)


def weights_for_saving(model: AGFFEmbedder) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def write_model_files(
    folder: Path, model: AGFFEmbedder, tokenizer: Tokenizer, metadata: dict[str, str] | None = None
) -> None:
    config = model.config
    config.save(folder)
    save_file(weights_for_saving(model), folder / WEIGHTS_FILE, metadata=metadata)
    write_tokenizer_files(tokenizer, folder)
    ImagePreprocessor(*config.image_size).save(folder, config.patch_size, config.merge_size)


def save_checkpoint(model: AGFFEmbedder, tokenizer: Tokenizer, folder: str | Path) -> Path:
    write_atomically(folder, lambda tmp: write_model_files(tmp, model, tokenizer), last=WEIGHTS_FILE)
    return Path(folder)


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: an AGFF checkpoint folder holds {CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE} "
            "(train one with `python -m train.run`)"
        )
    return path


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); re-save the checkpoint") from err


def load_checkpoint(folder: str | Path, image_size: tuple[int, int] | None = None) -> tuple[AGFFEmbedder, Tokenizer]:
    """Model (eval mode, CPU) and tokenizer from a checkpoint folder, optionally at another image size."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    config = AGFFConfig.load(folder)
    if image_size is not None:
        config = dataclasses.replace(config, image_size=tuple(image_size))
    weights = load_weights(_require(folder, WEIGHTS_FILE))
    tokenizer = Tokenizer.from_file(str(_require(folder, TOKENIZER_FILE)))
    model = AGFFEmbedder(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder / WEIGHTS_FILE} does not match {folder / CONFIG_FILE}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval(), tokenizer


def item_encoder(config: AGFFConfig, tokenizer: Tokenizer) -> ItemEncoder:
    formatter = ChatFormatter(tokenizer, config.num_image_tokens, config.max_text_tokens)
    return ItemEncoder(formatter, ImagePreprocessor(*config.image_size))

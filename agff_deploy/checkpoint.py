"""The checkpoint folder: safe formats only (safetensors + JSON), written atomically.

    ckpt/
      agff_config.json        AGFFConfig, including the base Qwen2-VL config
      model.safetensors       every weight: backbone, prompts, fusion, temperature
                              (past 2 GB: model-0000i-of-0000n.safetensors + index)
      tokenizer.json          + tokenizer_config.json (chat template)
      preprocessor_config.json

Files are written to a temporary folder first and moved into place one by one
with `os.replace`, so a reader never sees a half-written file. Loading builds
the model with empty parameters and assigns the stored tensors shard by shard,
so a checkpoint is held in memory once, at the dtype asked for.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from accelerate import init_empty_weights
from tokenizers import Tokenizer

from .config import CONFIG_FILE, AGFFConfig
from .errors import ArtifactError, MissingFileError
from .families import family_of
from .inputs import ItemEncoder
from .model import AGFFEmbedder
from .tokenization import TOKENIZER_FILE, ChatFormatter, write_tokenizer_files
from .weights import INDEX_FILE, SINGLE_FILE, iter_weights, weight_files, write_weights

WEIGHTS_FILE = SINGLE_FILE


WEIGHT_FILE_PATTERNS = (SINGLE_FILE, INDEX_FILE, "model-*-of-*.safetensors")


def write_atomically(
    folder: str | Path, write: Callable[[Path], None], last: str | None = None, replaces: Iterable[str] = ()
) -> None:
    """Let `write` fill a temporary folder, then move each file into `folder` (`last` moved last).

    Files matching a `replaces` pattern that this write did not produce are left-overs of an
    older layout (say, shards after a single file) and are removed before `last` lands.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp:
        write(Path(tmp))
        names = sorted(p.name for p in Path(tmp).iterdir())
        if last in names:
            names.remove(last)
            names.append(last)
        for name in names:
            if name == last:
                _remove_stale(folder, replaces, set(names))
            os.replace(Path(tmp) / name, folder / name)
        if last not in names:
            _remove_stale(folder, replaces, set(names))


def _remove_stale(folder: Path, patterns: Iterable[str], keep: set[str]) -> None:
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path.name not in keep:
                path.unlink()


def write_model_files(
    folder: Path,
    model: AGFFEmbedder,
    tokenizer: Tokenizer,
    metadata: dict[str, str] | None = None,
    weights: Iterable[tuple[str, torch.Tensor]] | None = None,
) -> None:
    """The checkpoint files of `model`; `weights` replaces its state dict (e.g. LoRA merged tensor by tensor)."""
    config = model.config
    config.save(folder)
    write_weights(folder, model.state_dict().items() if weights is None else weights, metadata)
    write_tokenizer_files(tokenizer, folder)
    config.image_format().preprocessor().save(folder, config.patch_size, config.merge_size)


def save_checkpoint(model: AGFFEmbedder, tokenizer: Tokenizer, folder: str | Path) -> Path:
    write_atomically(
        folder, lambda tmp: write_model_files(tmp, model, tokenizer), last=CONFIG_FILE, replaces=WEIGHT_FILE_PATTERNS
    )
    return Path(folder)


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise MissingFileError(
            f"{path} is missing: an AGFF checkpoint folder holds {CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE} "
            "(train one with `python -m train.run`)"
        )
    return path


def load_checkpoint(
    folder: str | Path, image_size: tuple[int, int] | None = None, dtype: torch.dtype | None = None
) -> tuple[AGFFEmbedder, Tokenizer]:
    """Model (eval mode, CPU, optionally cast to `dtype`) and tokenizer, optionally at a fixed image size."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"checkpoint folder {folder} does not exist")
    config = AGFFConfig.load(folder)
    family_of(config.base, f"{folder / CONFIG_FILE} (base)")
    if image_size is not None:
        config = dataclasses.replace(config, image_size=tuple(image_size), image_resize="fixed")
    weight_files(folder)
    tokenizer = Tokenizer.from_file(str(_require(folder, TOKENIZER_FILE)))
    with init_empty_weights(include_buffers=False):
        model = AGFFEmbedder(config)
    expected = set(model.state_dict())
    found: set[str] = set()
    for shard in iter_weights(folder, dtype):
        model.load_state_dict(shard, strict=False, assign=True)
        found |= set(shard)
    if found != expected:
        raise ArtifactError(
            f"the weights in {folder} do not match {folder / CONFIG_FILE}: "
            f"missing {sorted(expected - found)[:5]}, unexpected {sorted(found - expected)[:5]}"
        )
    if dtype is not None:
        model.to(dtype)  # the buffers computed at construction (rotary tables), not only the loaded weights
    return model.eval(), tokenizer


def item_encoder(config: AGFFConfig, tokenizer: Tokenizer) -> ItemEncoder:
    formatter = ChatFormatter(
        tokenizer,
        config.num_image_tokens,
        config.max_text_tokens,
        config.chat_head,
        config.chat_tail,
        config.empty_text,
        config.task_slot,
    )
    return ItemEncoder.for_images(formatter, config.image_format())

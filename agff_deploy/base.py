"""`python -m agff_deploy.base qwen3-vl-2b OUT`: a full-size base folder, randomly initialised, no hub.

Users bring real Qwen2-VL-2B or Qwen3-VL-2B folders; this machine cannot
download one. This writes a folder with the published architecture (the
Instruct checkpoint's config.json dimensions) in the `save_pretrained` layout
under the names the published weights use: config.json, bf16 safetensors
shards with an index, the tokenizer files, the family's chat template and a
preprocessor_config.json with the family's normalisation that sizes images to
448 x 448 pixels (256 image tokens at either patch size: a size a CPU trains
at; real folders bring their own). `python -m train.run --base OUT` and
`python -m export.to_onnx OUT --pooling last-token` then load it through
exactly the code path a downloaded folder takes. `--layers` / `--vision-depth`
keep every width and cut the block count, for tests (Qwen3-VL's DeepStack
taps move to the same relative depths of the shorter tower).

Weights are drawn one tensor at a time (transformers' init: normal(0, 0.02)
for matrices and embeddings, ones for norm scales, zeros for biases) and
written shard by shard, so peak memory is one shard, not the model.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from .checkpoint import write_atomically
from .errors import AgffError, InputError, print_error
from .families import FAMILIES, ModelFamily, family_of
from .preprocessing import ImagePreprocessor
from .presets import local_tokenizer
from .tokenization import special_token_ids, write_tokenizer_files
from .weights import DEFAULT_SHARD_BYTES, write_weights

BASE_IMAGE_SIZE = (448, 448)
# Every published architecture the writer lays out, and its family.
ARCHITECTURES: dict[str, ModelFamily] = {name: f for f in FAMILIES.values() for name in f.architectures}
TOKEN_ID_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def architecture_config(name: str, layers: int | None = None, vision_depth: int | None = None):
    """The published config of `name` (optionally with fewer blocks), with the local tokenizer's token ids."""
    if name not in ARCHITECTURES:
        raise InputError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    for flag, value in (("--layers", layers), ("--vision-depth", vision_depth)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    family = ARCHITECTURES[name]
    text, vision = family.reduced(name, layers, vision_depth)
    ids = special_token_ids(local_tokenizer())
    text.update(bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
    tie = family.architectures[name].tie_word_embeddings
    config = family.config(text, vision, {k: ids[k] for k in TOKEN_ID_KEYS}, tie)
    config.dtype = "bfloat16"
    return config


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def _parameters(config) -> list[tuple[str, nn.Module, str, torch.Size]]:
    """(module name, module, parameter name, shape) of every saved weight, from a skeleton on the meta device."""
    family = family_of(config.to_dict())
    with torch.device("meta"):
        skeleton = family.generation_class(config)
    seen: set[int] = set()
    found = []
    for module_name, module in skeleton.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) not in seen:  # a tied lm_head is saved once, as the embedding
                seen.add(id(param))
                found.append((module_name, module, param_name, param.shape))
    return found


def random_weights(config, seed: int, dtype: torch.dtype = torch.bfloat16) -> Iterator[tuple[str, torch.Tensor]]:
    """Every saved weight of a randomly initialised model, drawn one tensor at a time, under its published name."""
    family = family_of(config.to_dict())
    generator = torch.Generator().manual_seed(seed)
    std = config.text_config.initializer_range
    for module_name, module, param_name, shape in _parameters(config):
        if _is_norm(module):
            value = torch.ones(shape) if param_name == "weight" else torch.zeros(shape)
        elif param_name == "bias":
            value = torch.zeros(shape)
        else:
            value = torch.empty(shape).normal_(0.0, std, generator=generator)
        yield family.saved_name(f"{module_name}.{param_name}"), value.to(dtype)


def write_base(
    name: str,
    out: str | Path,
    layers: int | None = None,
    vision_depth: int | None = None,
    seed: int = 0,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write the base folder; files appear in `out` only once complete (config.json last)."""
    config = architecture_config(name, layers, vision_depth)
    family = ARCHITECTURES[name]
    tokenizer = local_tokenizer()

    def write(tmp: Path) -> None:
        total = len(_parameters(config))
        weights = tqdm(random_weights(config, seed), total=total, desc="weights", unit="tensor", dynamic_ncols=True)
        write_weights(tmp, weights, metadata={"format": "pt"}, shard_bytes=shard_bytes)
        write_tokenizer_files(tokenizer, tmp, family.chat_template)
        pixels = family.image_defaults
        preprocessor = ImagePreprocessor(*BASE_IMAGE_SIZE, mean=pixels.mean, std=pixels.std)
        preprocessor.save(tmp, pixels.patch_size, pixels.merge_size)
        config.save_pretrained(tmp)

    write_atomically(out, write, last="config.json")
    return Path(out)


def write_backbone_files(
    folder: Path,
    backbone: nn.Module,
    tokenizer: Tokenizer,
    image_size: tuple[int, int],
    metadata: dict[str, str] | None = None,
) -> None:
    """The base folder files of a trained backbone, in the layout above, with the output layer tied to the
    input embedding (how `train.generative` trains it); `load_base_folder` reads them back."""
    family = family_of(backbone.config.to_dict())
    config = family.config_class.from_dict(backbone.config.to_dict())
    config.tie_word_embeddings = True
    config.architectures = [family.generation_class.__name__]
    config.dtype = "float32"
    weights = ((family.saved_name(f"model.{name}"), value.detach()) for name, value in backbone.state_dict().items())
    write_weights(folder, weights, metadata=dict(metadata or {}, format="pt"))
    write_tokenizer_files(tokenizer, folder, family.chat_template)
    vision = config.vision_config
    ImagePreprocessor(*image_size).save(folder, vision.patch_size, vision.spatial_merge_size)
    config.save_pretrained(folder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agff_deploy.base", description=__doc__.split("\n\n")[0])
    p.add_argument("architecture", choices=sorted(ARCHITECTURES))
    p.add_argument("out", type=Path, help="folder to write (save_pretrained layout)")
    p.add_argument("--layers", type=int, help="language-model blocks (default: the published count)")
    p.add_argument("--vision-depth", type=int, help="vision blocks (default: the published count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-gb", type=float, default=DEFAULT_SHARD_BYTES / 2**30, help="shard size (default: 2)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    try:
        write_base(args.architecture, args.out, args.layers, args.vision_depth, args.seed, int(args.shard_gb * 2**30))
    except (AgffError, OSError) as err:
        return print_error(err)
    print(f"wrote {args.architecture} base to {args.out.resolve()} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

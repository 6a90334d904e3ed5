"""Weight files in safetensors, sharded past a size, written and read one shard at a time.

A 2B-parameter model is 8.8 GB in fp32, a third of a 24 GB machine: it must
never be held twice. Writers take an iterator of `(name, tensor)` and flush a
shard whenever it reaches `shard_bytes`, so a caller can produce (merge, cast,
initialise) each tensor just before it is written; readers map one shard at a
time. The layout is transformers' own: `model.safetensors`, or
`model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import ArtifactError, MissingFileError
from .manifest import sha256_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 2 * 2**30


def _shard_name(index: int, count: int) -> str:
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def write_weights(
    folder: str | Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: dict[str, str] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> list[Path]:
    """Write `tensors` into `folder` as one file, or as shards plus an index past `shard_bytes`."""
    folder = Path(folder)
    shards: list[tuple[Path, list[str], int]] = []
    pending: dict[str, torch.Tensor] = {}
    for name, tensor in tensors:
        tensor = tensor.detach().to("cpu").contiguous()
        if pending and _nbytes(pending) + _nbytes({name: tensor}) > shard_bytes:
            shards.append(_write_shard(folder, len(shards) + 1, pending, metadata))
            pending = {}
        pending[name] = tensor
    shards.append(_write_shard(folder, len(shards) + 1, pending, metadata))
    if len(shards) == 1:
        return [shards[0][0].rename(folder / SINGLE_FILE)]
    paths, weight_map = [], {}
    for i, (path, names, _) in enumerate(shards, start=1):
        final = path.rename(folder / _shard_name(i, len(shards)))
        paths.append(final)
        weight_map.update(dict.fromkeys(names, final.name))
    index = {"metadata": dict(metadata or {}, total_size=sum(s[2] for s in shards)), "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return paths


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _write_shard(
    folder: Path, number: int, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None
) -> tuple[Path, list[str], int]:
    path = folder / f".shard-{number:05d}.safetensors"
    save_file(tensors, path, metadata=metadata)
    return path, list(tensors), _nbytes(tensors)


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of `folder`, each checked to exist and to have a readable safetensors header.

    A missing or truncated shard is named here, before anything is loaded.
    """
    folder = Path(folder)
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ArtifactError(f"{index_path} is not a safetensors index (needs a 'weight_map'): {err}") from err
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
    elif (folder / SINGLE_FILE).is_file():
        files = [folder / SINGLE_FILE]
    else:
        raise MissingFileError(
            f"{folder / SINGLE_FILE} is missing (and there is no {INDEX_FILE} of shards): the folder holds no weights"
        )
    for path in files:
        if not path.is_file():
            raise MissingFileError(f"{path} is missing: {index_path.name} lists it as a weight shard")
        _check_header(path)
    return files


def _check_header(path: Path) -> None:
    try:
        with safe_open(path, "pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise ArtifactError(
            f"{path} is not a readable safetensors file ({err}): truncated or corrupt; copy or re-save it"
        ) from err


def iter_weights(folder: str | Path, dtype: torch.dtype | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """The weights of `folder` one shard at a time (floating tensors cast to `dtype` if given)."""
    for path in weight_files(folder):
        with safe_open(path, "pt") as f:
            shard = {}
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = f.get_tensor(name)
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                shard[name] = tensor
        yield shard


def weights_metadata(folder: str | Path) -> dict[str, str]:
    with safe_open(weight_files(folder)[0], "pt") as f:
        return dict(f.metadata() or {})


def weights_sha256(folder: str | Path) -> str:
    """One digest for all weight files: the file's sha256, or the sha256 of the shards' digests in order."""
    files = weight_files(folder)
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(p) for p in files).encode()).hexdigest()


def weights_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in weight_files(folder))

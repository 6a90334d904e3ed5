"""One immutable part of an index: items added together, their K+1 vectors on disk and a FAISS index of their
global vectors.

    segment-<pid>-<token>/
      vectors.npy    [n, K+1, D] float16: a search reads its shortlist's rows, nothing else
      items.jsonl    one JSON object per row (path as resolved and as given, size, mtime), read by byte offset
      offsets.npy    [n + 1] int64, where each row's line starts in items.jsonl
      keys.npy       (path hash, row, size, mtime) sorted by hash: which rows hold a path, without reading items
      global.faiss   the global vectors: flat (exact, fp16) below IVF_MIN_ROWS rows, IVF with 8-bit codes above

A segment is written once, every file made durable before the index's commit record names it, and never changed
after: adding items writes a new segment, removing them records their rows in the index's deletions. So adding
10k items costs what writing 10k items costs, however large the index is.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from agff_deploy.errors import MissingDependencyError

VECTORS, ITEMS, OFFSETS, KEYS, GLOBAL = "vectors.npy", "items.jsonl", "offsets.npy", "keys.npy", "global.faiss"
KEY_DTYPE = np.dtype([("hash", "<u8"), ("row", "<i8"), ("size", "<i8"), ("mtime_ns", "<i8")])
IVF_MIN_ROWS = 50_000  # below this an exact scan of the global vectors is as fast as an approximate one
TRAINING_ROWS_PER_LIST = 64  # k-means sample: FAISS wants 30 to 256 points per centroid
PROBED_FRACTION = 1 / 16  # of the IVF lists scanned per query (nprobe = nlist / 16)
CHUNK_ROWS = 8192  # rows read or written at a time while building


def path_hashes(paths: Iterable[str]) -> np.ndarray:
    """64-bit hashes of resolved paths (a match is confirmed against the stored path, so a collision is harmless)."""
    digests = (hashlib.blake2b(p.encode(), digest_size=8).digest() for p in paths)
    return np.array([int.from_bytes(d, "little") for d in digests], np.uint64)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise MissingDependencyError(
            "agff-run's index needs FAISS: pip install 'agff-deploy[cpu]' (or pip install faiss-cpu)"
        ) from err
    return faiss


def ivf_lists(rows: int) -> int:
    """About sqrt(n) lists: each list, and the scan of nprobe of them, grows as sqrt(n)."""
    return max(1, round(math.sqrt(rows)))


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class VectorFile:
    """A `.npy` of `[n, K+1, D]` float16 read and written by rows with plain file I/O.

    Not a memory map: a map's readahead pulls the pages around every row a search touches into the process's
    resident memory, query after query, where reads leave them in the page cache, which the kernel drops as it
    needs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            headers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape, _, dtype = headers[version](f)
            self.start = f.tell()
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(shape[1:])) * self.dtype.itemsize

    @staticmethod
    def write(path: Path, shape: tuple[int, ...], blocks: Iterable[np.ndarray]) -> None:
        """`blocks` of rows, in order, as a float16 `.npy` of `shape`, made durable."""
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f2")), "fortran_order": False, "shape": shape}
        with open(path, "wb") as f:
            np.lib.format.write_array_header_2_0(f, header)
            for block in blocks:
                f.write(np.ascontiguousarray(block, "<f2").tobytes())
            f.flush()
            os.fsync(f.fileno())

    def rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The vectors of `rows` (in that order)."""
        with open(self.path, "rb", buffering=0) as f:
            data = b"".join(os.pread(f.fileno(), self.row_bytes, self.start + int(r) * self.row_bytes) for r in rows)
        return np.frombuffer(data, self.dtype).reshape(len(rows), *self.shape[1:])

    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows `start` to `stop`, one read."""
        stop = min(stop, self.shape[0])
        with open(self.path, "rb") as f:
            f.seek(self.start + start * self.row_bytes)
            data = f.read((stop - start) * self.row_bytes)
        return np.frombuffer(data, self.dtype).reshape(stop - start, *self.shape[1:])


def write_segment(
    folder: Path, count: int, vectors: int, dimensions: int, chunks: Iterable[tuple[list[dict], np.ndarray]]
) -> None:
    """Write `count` items arriving in chunks of (items, `[n, K+1, D]` embeddings) as a segment in `folder`.

    Items are dicts with `path` (resolved), `given`, `size`, `mtime_ns`. Memory stays at a chunk plus the FAISS
    index whatever `count` is: the vectors are written as they arrive, then read back a block at a time.
    """
    folder.mkdir(parents=True)
    keys = np.zeros(count, KEY_DTYPE)
    offsets = np.zeros(count + 1, np.int64)
    row = 0

    def blocks(lines: BinaryIO) -> Iterator[np.ndarray]:
        nonlocal row
        for items, embeddings in chunks:
            end = row + len(items)
            if end > count or embeddings.shape != (len(items), vectors, dimensions):
                raise ValueError(f"segment chunk {embeddings.shape} for {len(items)} items at row {row} of {count}")
            keys["hash"][row:end] = path_hashes(item["path"] for item in items)
            keys["row"][row:end] = np.arange(row, end)
            keys["size"][row:end] = [item["size"] for item in items]
            keys["mtime_ns"][row:end] = [item["mtime_ns"] for item in items]
            for i, item in enumerate(items):
                lines.write(json.dumps(item).encode() + b"\n")
                offsets[row + i + 1] = lines.tell()
            row = end
            yield embeddings

    with open(folder / ITEMS, "wb") as lines:
        VectorFile.write(folder / VECTORS, (count, vectors, dimensions), blocks(lines))
        lines.flush()
        os.fsync(lines.fileno())
    if row != count:
        raise ValueError(f"segment of {count} items got {row}")
    for name, array in ((OFFSETS, offsets), (KEYS, np.sort(keys, order="hash"))):
        with open(folder / name, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
    _write_global_index(folder, count, dimensions)


def _write_global_index(folder: Path, count: int, dimensions: int) -> None:
    faiss = _faiss()
    stored = VectorFile(folder / VECTORS)
    if count < IVF_MIN_ROWS:
        index = faiss.IndexScalarQuantizer(dimensions, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    else:
        lists = ivf_lists(count)
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(dimensions), dimensions, lists, faiss.ScalarQuantizer.QT_8bit,
            faiss.METRIC_INNER_PRODUCT,
        )  # fmt: skip
        sample = np.sort(np.random.default_rng(0).choice(count, min(count, lists * TRAINING_ROWS_PER_LIST), False))
        index.train(np.ascontiguousarray(stored.rows(sample)[:, 0], np.float32))
    for start in range(0, count, CHUNK_ROWS):
        index.add(np.ascontiguousarray(stored.block(start, start + CHUNK_ROWS)[:, 0], np.float32))
    faiss.write_index(index, str(folder / GLOBAL))
    _fsync(folder / GLOBAL)


@dataclass
class Segment:
    """A written segment, opened for reading: nothing is read until a search or lookup needs it."""

    folder: Path

    @cached_property
    def vectors(self) -> VectorFile:
        return VectorFile(self.folder / VECTORS)

    @cached_property
    def keys(self) -> np.ndarray:
        return np.load(self.folder / KEYS, mmap_mode="r")

    @cached_property
    def offsets(self) -> np.ndarray:
        return np.load(self.folder / OFFSETS, mmap_mode="r")

    @cached_property
    def global_index(self) -> Any:
        faiss = _faiss()
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
        return faiss.read_index(str(self.folder / GLOBAL), flags)

    def items(self, rows: Iterable[int]) -> list[dict[str, Any]]:
        """The stored items of `rows`, each read from its byte range of items.jsonl."""
        found = []
        with open(self.folder / ITEMS, "rb") as f:
            for row in rows:
                f.seek(int(self.offsets[row]))
                found.append(json.loads(f.read(int(self.offsets[row + 1] - self.offsets[row]))))
        return found

    def all_items(self) -> Iterator[dict[str, Any]]:
        with open(self.folder / ITEMS, "rb") as f:
            for line in f:
                yield json.loads(line)

    def rows_of(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into `hashes`, row) for every row whose path hash is among `hashes`."""
        stored = self.keys["hash"]
        first, last = np.searchsorted(stored, hashes, "left"), np.searchsorted(stored, hashes, "right")
        which = np.repeat(np.arange(len(hashes)), last - first)
        positions = np.concatenate([np.arange(a, b) for a, b in zip(first, last, strict=True)] or [np.zeros(0, int)])
        return which, np.asarray(self.keys["row"][positions], np.int64)

    def nearest(self, query: np.ndarray, count: int, deleted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(global score, row) of the `count` rows nearest `query` [D], deleted rows excluded."""
        faiss = _faiss()
        index = self.global_index
        ivf = hasattr(index, "nlist")
        params = faiss.SearchParametersIVF() if ivf else faiss.SearchParameters()
        if ivf:
            params.nprobe = max(1, round(index.nlist * PROBED_FRACTION))
        selectors = []  # FAISS keeps raw pointers: the selectors must outlive the search
        if len(deleted):
            selectors = [faiss.IDSelectorBatch(np.asarray(deleted, np.int64))]
            selectors.append(faiss.IDSelectorNot(selectors[0]))
            params.sel = selectors[-1]
        scores, rows = index.search(np.ascontiguousarray(query[None], np.float32), count, params=params)
        found = rows[0] >= 0
        return scores[0][found], rows[0][found]

"""The Parquet shards `agff-run embed-corpus` writes and an index reads: one row per item, each id at most once.

    DIR/shard-000001-9f2c41d0.parquet     columns id, path, size, mtime_ns, embeddings, global, error
    DIR/shard-000002-03ab77e1.parquet     (the 8 hex digits keep two runs from ever writing the same name)

- `id`: the item's resolved absolute path, its identity (a symlink and its target are one item);
- `path`: the path as the source gave it; `size`, `mtime_ns`: its stat when embedded (null: it could not be stat'ed);
- `embeddings`: the item's `[K+1, D]` embeddings, row-major, as `fixed_size_list<float32>[(K+1)*D]`;
- `global`: row 0 of those (the global vector), `fixed_size_list<float32>[D]`, what a single-vector store reads;
- `error`: why the item could not be embedded; null when embedded.

An item with an error has NaN embeddings, not null ones: Arrow C++ before 26 cannot read a null fixed-size list
back from Parquet (apache/arrow#35692), and pyarrow 26 needs numpy 2. Readers keep the rows whose `error` is null.

The schema metadata names the model (`agff.model_id`, the sha256 of its weights) and the shape (`agff.vectors` =
K+1, `agff.dimensions` = D) under `agff.format` 1, so shards of another model are refused, not mixed.

A shard is written to a temporary name in DIR and renamed, so a shard name always holds a whole shard and the ids
in shard files are exactly what is done: a writer killed with SIGKILL leaves only a temporary file, removed by the
next writer. One writer at a time (`writer_lock`).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agff_deploy.atomic_files import write_atomically
from agff_deploy.errors import ArtifactError, InputError

FORMAT = "1"
SHARD_NAME = re.compile(r"^shard-(\d{6})-[0-9a-f]{8}\.parquet$")
TEMPORARY_NAME = re.compile(r"^\.shard-\d{6}-[0-9a-f]{8}\.parquet\.tmp-\d+$")  # write_atomically's temporary names
LOCK_FILE = ".writer.lock"


@dataclass(frozen=True)
class ShardModel:
    """What every shard of one folder shares: the model (its weights' sha256) and the embeddings' shape."""

    model_id: str
    vectors: int  # K+1: the global vector and K fine-grained ones
    dimensions: int  # D

    def metadata(self) -> dict[bytes, bytes]:
        return {
            b"agff.format": FORMAT.encode(),
            b"agff.model_id": self.model_id.encode(),
            b"agff.vectors": str(self.vectors).encode(),
            b"agff.dimensions": str(self.dimensions).encode(),
        }

    @classmethod
    def of(cls, schema: pa.Schema, where: Path | str) -> ShardModel:
        """The model a shard's schema names; `where` (the shard) names it in the error for another format."""
        meta = schema.metadata or {}
        if meta.get(b"agff.format") != FORMAT.encode():
            raise ArtifactError(
                f"{where}: not an agff-deploy corpus shard of format {FORMAT} (agff.format is "
                f"{meta.get(b'agff.format', b'missing').decode()}); write it again with `agff-run embed-corpus`"
            )
        return cls(meta[b"agff.model_id"].decode(), int(meta[b"agff.vectors"]), int(meta[b"agff.dimensions"]))

    def schema(self) -> pa.Schema:
        width = self.vectors * self.dimensions
        fields = [
            pa.field("id", pa.string(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("size", pa.int64()),
            pa.field("mtime_ns", pa.int64()),
            pa.field("embeddings", pa.list_(pa.float32(), width)),
            pa.field("global", pa.list_(pa.float32(), self.dimensions)),
            pa.field("error", pa.string()),
        ]
        return pa.schema(fields, metadata=self.metadata())

    def describe(self) -> str:
        return f"model {self.model_id[:12]}… with {self.vectors}x{self.dimensions} embeddings"


@dataclass
class ShardRows:
    """Rows of shards as numpy: `embeddings` is `[n, K+1, D]` float32, NaN where the item has an error."""

    ids: list[str]
    paths: list[str]
    sizes: list[int | None]
    mtimes: list[int | None]
    embeddings: np.ndarray
    errors: list[str | None]


def rows_table(model: ShardModel, rows: ShardRows) -> pa.Table:
    """`rows` as a table with the shard schema; the embeddings of rows with an error are written as NaN."""
    n = len(rows.ids)
    failed = np.array([e is not None for e in rows.errors], bool).reshape(n, 1, 1)
    dense = np.where(failed, np.float32(np.nan), rows.embeddings).astype(np.float32).reshape(n, -1)
    if dense.shape[1:] != (model.vectors * model.dimensions,):
        raise InputError(f"embeddings of shape {rows.embeddings.shape[1:]} for a shard of {model.describe()}")
    width = model.vectors * model.dimensions
    columns = [
        pa.array(rows.ids, pa.string()),
        pa.array(rows.paths, pa.string()),
        pa.array(rows.sizes, pa.int64()),
        pa.array(rows.mtimes, pa.int64()),
        _vectors(dense, width),
        _vectors(np.ascontiguousarray(dense[:, : model.dimensions]), model.dimensions),
        pa.array(rows.errors, pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=model.schema())


def _vectors(dense: np.ndarray, width: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(dense.ravel()), width)


def table_rows(table: pa.Table) -> ShardRows:
    """A shard's table (or several concatenated) as numpy rows."""
    model = ShardModel.of(table.schema, "a shard table")
    values = table.column("embeddings").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    embeddings = values.astype(np.float32, copy=False).reshape(-1, model.vectors, model.dimensions)
    return ShardRows(
        table.column("id").to_pylist(),
        table.column("path").to_pylist(),
        table.column("size").to_pylist(),
        table.column("mtime_ns").to_pylist(),
        embeddings,
        table.column("error").to_pylist(),
    )


def shard_files(folder: Path) -> list[Path]:
    """The committed shards of `folder`, in sequence order."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if SHARD_NAME.match(p.name))


def next_sequence(folder: Path) -> int:
    files = shard_files(folder)
    return int(SHARD_NAME.match(files[-1].name).group(1)) + 1 if files else 1  # type: ignore[union-attr]


def write_shard(folder: Path, seq: int, model: ShardModel, table: pa.Table) -> Path:
    """`table` (rows with the shard schema) as shard number `seq` of `folder`, written atomically."""
    path = folder / f"shard-{seq:06d}-{secrets.token_hex(4)}.parquet"
    table = table.replace_schema_metadata(model.metadata())
    write_atomically(path, lambda f: pq.write_table(table, f))
    return path


class ShardWriter:
    """Result rows in, a shard committed for every `size` of them (and for the rest on `close`)."""

    def __init__(self, folder: Path, model: ShardModel, size: int) -> None:
        self.folder, self.model, self.size = folder, model, size
        self.seq = next_sequence(folder)
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.written = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        while self.rows >= self.size:
            self._commit(self.size)

    def close(self) -> None:
        if self.rows:
            self._commit(self.rows)

    def _commit(self, count: int) -> None:
        whole = pa.concat_tables(self.pending)
        write_shard(self.folder, self.seq, self.model, whole.slice(0, count))
        rest = whole.slice(count)
        self.pending, self.rows = ([rest] if rest.num_rows else []), rest.num_rows
        self.seq, self.written = self.seq + 1, self.written + 1


def read_shards(folder: Path, model: ShardModel | None = None) -> Iterator[pa.Table]:
    """Each committed shard of `folder` as a table, in sequence order; with `model`, refuses shards of another."""
    for path in shard_files(folder):
        table = pq.read_table(path)
        if model is not None:
            require_model(path, ShardModel.of(table.schema, path), model)
        yield table


def done_ids(folder: Path) -> set[str]:
    """The ids in the committed shards of `folder`: the items a rerun skips (embedded or failed)."""
    return {i for path in shard_files(folder) for i in pq.read_table(path, columns=["id"]).column("id").to_pylist()}


def check_folder(folder: Path, model: ShardModel) -> None:
    """Refuse a folder whose shards come from another model or have another shape (read from the footers only)."""
    for path in shard_files(folder):
        require_model(path, ShardModel.of(pq.read_schema(path), path), model)


def require_model(path: Path, found: ShardModel, expected: ShardModel) -> None:
    if found != expected:
        raise ArtifactError(
            f"{path} holds embeddings of {found.describe()}, not of {expected.describe()}: "
            "write this model's shards to another --out folder"
        )


@contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's writer lock (released by the kernel even after SIGKILL), then remove what killed writers
    left: their temporary files are never shards."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{folder}: another agff-run embed-corpus writes here; wait for it to finish") from None
        for path in folder.iterdir():
            if TEMPORARY_NAME.match(path.name):
                os.unlink(path)
        yield


def index_items(folder: Path, model: ShardModel, skip: Callable[[list[dict]], list[bool]]) -> tuple[int, Iterator]:
    """The embedded items of `folder`'s shards for an index: (count, chunks of (items, `[n, K+1, D]` vectors)).

    Failed rows are left out, and so are the rows `skip(items)` says the index holds already (same path, size and
    mtime). A first pass reads the small columns alone to count what goes in; the vectors are read shard by shard
    as the index writes them."""
    chosen = []
    for path in shard_files(folder):
        require_model(path, ShardModel.of(pq.read_schema(path), path), model)
        keys = pq.read_table(path, columns=["id", "path", "size", "mtime_ns", "error"]).to_pylist()
        items = [{"path": r["id"], "given": r["path"], "size": r["size"], "mtime_ns": r["mtime_ns"]} for r in keys]
        embedded = [r["error"] is None for r in keys]
        known = skip([item for item, ok in zip(items, embedded, strict=True) if ok])
        rows = [i for i, ok in enumerate(embedded) if ok]
        chosen.append((path, [(row, items[row]) for row, old in zip(rows, known, strict=True) if not old]))

    def chunks() -> Iterator[tuple[list[dict], np.ndarray]]:
        for path, wanted in chosen:
            if wanted:
                vectors = table_rows(pq.read_table(path)).embeddings
                yield [item for _, item in wanted], vectors[[row for row, _ in wanted]]

    return sum(len(wanted) for _, wanted in chosen), chunks()

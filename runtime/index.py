"""A persistent multi-vector index at corpus scale, searched in two stages.

    index/
      index.json                 the commit record: format, model, K+1 and D, the segments and their deletions
      segment-<pid>-<token>/     items added together (runtime/index_segment.py): K+1 vectors as float16 on
                                 disk, a FAISS index of the global vectors
      deleted-<pid>-<token>.npy  a segment's deleted rows, rewritten only when they change

Search asks each segment's FAISS index for its `shortlist` nearest items by global vector (exact below 50k
rows, IVF above), reads the K+1 vectors of the best `shortlist` overall from disk and ranks them by the fused
score. A search process holds the FAISS indexes (memory-mapped) and the shortlist, never the whole corpus.

Adding writes a new segment; a changed file's old row is deleted, not rewritten. Past MAX_SEGMENTS segments the
smallest are merged into one, so the work of an update follows the items it adds, not the index's size.

Every new file has a new name; renaming index.json over the old one is the commit. A writer killed at any moment
leaves the previous index or the new one. The next writer removes what a killed one left (files whose writer is
no longer running, files no commit names). One writer at a time.

A format-2 index (items.json and one embeddings file) is migrated by the next `agff-run index`; searching one
first says so in one line.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agff_deploy.atomic_files import write_atomically, writer_running
from agff_deploy.errors import ArtifactError, MissingFileError

from .index_segment import CHUNK_ROWS, Segment, path_hashes, write_segment

FORMAT = 3
INDEX_FILE = "index.json"
LEGACY_ITEMS_FILE = "items.json"  # format 2 (and 1: embeddings.npy)
MAX_SEGMENTS = 8
_OURS = re.compile(r"^(?:segment|deleted|embeddings)-(\d+)-|\.tmp-(\d+)$|^embeddings\.npy$|^items\.json$")

Score = Callable[[np.ndarray, np.ndarray], np.ndarray]


def file_key(path: Path) -> dict[str, Any]:
    """What identifies an indexed file wherever the index is used from: its resolved path, size and mtime."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def shown_path(item: dict[str, Any]) -> str:
    """The path as given at index time (as `agff-run` prints embedded paths) while it still names the indexed file
    from the current folder, else the absolute path."""
    given = item.get("given")
    if given and str(Path(given).resolve()) == item["path"]:
        return given
    return item["path"]


@dataclass
class SegmentEntry:
    name: str
    rows: int
    deleted: str | None = None  # the file of its deleted rows, if any


class EmbeddingIndex:
    def __init__(self, folder: Path, model_id: str, shape: tuple[int, int] | None, entries: list[SegmentEntry]) -> None:
        self.folder, self.model_id, self.shape, self.entries = folder, model_id, shape, entries
        self.segments = {e.name: Segment(folder / e.name) for e in entries}
        self.deleted = {e.name: _load_rows(folder, e.deleted) for e in entries}
        self._changed: set[str] = set()  # segments whose deletions changed since the last commit
        self._retired: list[str] = []  # files the next commit stops naming

    @classmethod
    def load(cls, folder: str | Path) -> EmbeddingIndex:
        """A committed index, for searching."""
        folder = Path(folder)
        record_path = folder / INDEX_FILE
        if not record_path.is_file():
            if (folder / LEGACY_ITEMS_FILE).is_file():
                raise ArtifactError(
                    f"{folder} is an index of an older format; migrate it in place with `agff-run index --index "
                    f"{folder} --engine BUNDLE`, then search again"
                )
            raise MissingFileError(
                f"{record_path} not found: build an index with `agff-run index FOLDER --engine BUNDLE --index {folder}`"
            )
        record = json.loads(record_path.read_text())
        if record.get("format") != FORMAT:
            raise ArtifactError(
                f"{record_path}: index format {record.get('format')}, this agff-deploy reads {FORMAT}; rebuild it "
                f"with `agff-run index FOLDER --engine BUNDLE --index {folder}` into an empty folder"
            )
        shape = tuple(record["shape"]) if record["shape"] else None
        return cls(folder, record["model_id"], shape, [SegmentEntry(**e) for e in record["segments"]])  # type: ignore[arg-type]

    @classmethod
    def open_or_create(cls, folder: str | Path, model_id: str) -> EmbeddingIndex:
        """The index to update, after migrating a format-2 index and removing what killed writers left."""
        folder = Path(folder)
        if (folder / INDEX_FILE).is_file():
            index = cls.load(folder)
        elif (folder / LEGACY_ITEMS_FILE).is_file():
            index = _migrated(folder)
        else:
            index = cls(folder, model_id, None, [])
        index.require_model(model_id)
        if folder.is_dir():
            _remove_leftovers(folder, index._named_files())
        return index

    def require_model(self, model_id: str) -> None:
        if model_id != self.model_id:
            raise ArtifactError(
                f"{self.folder} was built with another model (weights sha256 {self.model_id[:12]}…; the model given "
                f"is {model_id[:12]}…); rebuild it with `agff-run index` into an empty folder"
            )

    def require_shape(self, shape: tuple[int, ...]) -> None:
        """Every item holds K+1 vectors of D; a shape of another model's is refused naming both."""
        if self.shape is not None and tuple(shape) != self.shape:
            raise ArtifactError(
                f"{self.folder} holds items of {self.shape[0]} vectors of {self.shape[1]} dimensions; these have "
                f"{shape[0]} of {shape[1]}: they come from another model. Index them into another folder"
            )

    def __len__(self) -> int:
        return sum(map(self._live_count, self.entries))

    def items(self) -> Iterator[dict[str, Any]]:
        """Every item (resolved path, path as given, size, mtime), segment by segment."""
        for entry in self.entries:
            deleted = set(self.deleted[entry.name].tolist())
            yield from (item for row, item in enumerate(self.segments[entry.name].all_items()) if row not in deleted)

    def live(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """Every item and its `[K+1, D]` float16 vectors, segment by segment."""
        for items, vectors in self._live_chunks(self.entries):
            yield from zip(items, vectors, strict=True)

    def stale(self, paths: list[Path]) -> list[Path]:
        """Paths that are new or changed since they were indexed."""
        return [p for p, same in zip(paths, self.unchanged([file_key(p) for p in paths]), strict=True) if not same]

    def unchanged(self, items: list[dict[str, Any]]) -> list[bool]:
        """Which items (resolved `path`, `size`, `mtime_ns`) the index holds as they are."""
        known = {(i["path"], i["size"], i["mtime_ns"]) for i in self._items_of([item["path"] for item in items])}
        return [(item["path"], item["size"], item["mtime_ns"]) in known for item in items]

    def add(self, paths: list[Path], embeddings: np.ndarray) -> None:
        """Add (or replace) files' items; committed by `commit`."""
        self.add_items([{**file_key(p), "given": str(p)} for p in paths], embeddings)

    def add_items(self, items: list[dict[str, Any]], embeddings: np.ndarray) -> None:
        """Items (`path` resolved, `given`, `size`, `mtime_ns`) and their `[n, K+1, D]` vectors; the last of a
        path repeated in `items` is kept."""
        last = {item["path"]: i for i, item in enumerate(items)}
        kept = sorted(last.values())
        self.add_chunks(len(kept), [([items[i] for i in kept], embeddings[kept])])

    def add_chunks(self, count: int, chunks: Iterable[tuple[list[dict[str, Any]], np.ndarray]]) -> None:
        """`count` items arriving in chunks (a corpus larger than memory), paths distinct, as one new segment; the
        rows those paths held elsewhere are deleted."""
        written = self._write_segment(count, chunks)
        if written:
            self.remove(written[1])
            self._attach(written[0])

    def _write_segment(
        self, count: int, chunks: Iterable[tuple[list[dict[str, Any]], np.ndarray]]
    ) -> tuple[SegmentEntry, list[str]] | None:
        """The chunks written as a segment not yet part of the index, and the paths it holds."""
        pending = iter(chunks)
        first = next(pending, None)
        if count == 0 or first is None:
            return None
        shape = first[1].shape[1:]
        self.require_shape(shape)
        self.shape = (int(shape[0]), int(shape[1]))
        name = f"segment-{os.getpid()}-{secrets.token_hex(4)}"
        paths: list[str] = []

        def checked() -> Iterator[tuple[list[dict[str, Any]], np.ndarray]]:
            for items, embeddings in itertools.chain([first], pending):
                self.require_shape(embeddings.shape[1:])
                paths.extend(item["path"] for item in items)
                yield items, embeddings

        write_segment(self.folder / name, count, *self.shape, checked())
        return SegmentEntry(name, count), paths

    def _attach(self, entry: SegmentEntry) -> None:
        self.entries.append(entry)
        self.segments[entry.name] = Segment(self.folder / entry.name)
        self.deleted[entry.name] = np.zeros(0, np.int64)

    def remove(self, paths: Iterable[str]) -> int:
        """Delete the items of these resolved paths (a vanished file, or the old row of a replaced one)."""
        paths = list(paths)
        removed = 0
        for entry in self.entries:
            rows = self._rows_of(entry.name, paths)
            if len(rows):
                self.deleted[entry.name] = np.union1d(self.deleted[entry.name], rows)
                self._changed.add(entry.name)
                removed += len(rows)
        return removed

    def commit(self) -> None:
        """Make everything added and removed since the last commit the index: one rename of index.json."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._drop_empty()
        self._merge_smallest()
        for entry in self.entries:
            if entry.name in self._changed:
                if entry.deleted:
                    self._retired.append(entry.deleted)
                entry.deleted = f"deleted-{os.getpid()}-{secrets.token_hex(4)}.npy"
                rows = self.deleted[entry.name]
                write_atomically(self.folder / entry.deleted, lambda f, rows=rows: np.save(f, rows))
        record = {"format": FORMAT, "model_id": self.model_id, "shape": self.shape,
                  "segments": [asdict(e) for e in self.entries]}  # fmt: skip
        write_atomically(self.folder / INDEX_FILE, lambda f: f.write(json.dumps(record, indent=1).encode()))
        self._changed.clear()
        for name in self._retired:
            _remove(self.folder / name)
        self._retired.clear()

    def search(
        self, query: np.ndarray, score: Score, query_is_text: bool, top_k: int = 10, shortlist: int = 100
    ) -> list[tuple[str, float]]:
        """Top `top_k` (path to show, fused score) for one query `[K+1, D]`.

        `score(a, b)` is the fused similarity; index items are images, so a text query is scored as (image, text),
        the pairing the model was trained on.
        """
        hits = self.search_items(query, score, query_is_text, top_k, shortlist)
        return [(shown_path(item), fused) for item, fused in hits]

    def search_items(
        self, query: np.ndarray, score: Score, query_is_text: bool, top_k: int = 10, shortlist: int = 100
    ) -> list[tuple[dict[str, Any], float]]:
        """`search`, with each hit's stored item (its resolved path, size and mtime) instead of a path to show."""
        shortlist = max(shortlist, top_k)
        found = [self.segments[e.name].nearest(query[0], shortlist, self.deleted[e.name]) for e in self.entries]
        coarse = np.concatenate([scores for scores, _ in found] or [np.zeros(0)])
        segment = np.concatenate([np.full(len(rows), i) for i, (_, rows) in enumerate(found)] or [np.zeros(0, int)])
        rows = np.concatenate([rows for _, rows in found] or [np.zeros(0, int)])
        best = np.argsort(-coarse, kind="stable")[:shortlist]
        if not len(best):
            return []
        segment, rows = segment[best], rows[best]
        vectors = np.empty((len(best), *self.shape), np.float32)  # type: ignore[misc]
        for s in np.unique(segment):
            vectors[segment == s] = self.segments[self.entries[s].name].vectors.rows(rows[segment == s])
        fine = score(vectors, query[None])[:, 0] if query_is_text else score(query[None], vectors)[0]
        order = np.argsort(-fine, kind="stable")[:top_k]
        return [(self.segments[self.entries[segment[i]].name].items([rows[i]])[0], float(fine[i])) for i in order]

    def _rows_of(self, name: str, paths: list[str]) -> np.ndarray:
        """The live rows of segment `name` that hold these resolved paths."""
        if not paths:
            return np.zeros(0, np.int64)
        segment = self.segments[name]
        which, rows = segment.rows_of(path_hashes(paths))
        live = ~np.isin(rows, self.deleted[name])
        which, rows = which[live], rows[live]
        items = segment.items(rows.tolist())
        same = [item["path"] == paths[w] for w, item in zip(which, items, strict=True)]  # not a hash collision
        return rows[np.asarray(same, bool)]

    def _items_of(self, paths: list[str]) -> list[dict[str, Any]]:
        found = []
        for entry in self.entries:
            rows = self._rows_of(entry.name, paths)
            found += self.segments[entry.name].items(rows.tolist())
        return found

    def _drop_empty(self) -> None:
        for entry in [e for e in self.entries if not self._live_count(e)]:
            self._retire(entry)

    def _merge_smallest(self) -> None:
        """Past MAX_SEGMENTS, the smallest segments (by live items) become one: their live rows are rewritten,
        the larger segments are not touched."""
        if len(self.entries) <= MAX_SEGMENTS:
            return
        merged = sorted(self.entries, key=self._live_count)[: len(self.entries) - MAX_SEGMENTS + 1]
        count = sum(map(self._live_count, merged))
        for entry in merged:
            self._retire(entry)  # its files stay until the commit: the merge reads them
        written = self._write_segment(count, self._live_chunks(merged))
        if written:
            self._attach(written[0])  # live rows: no other segment holds their paths, nothing to delete

    def _live_chunks(self, entries: list[SegmentEntry]) -> Iterator[tuple[list[dict[str, Any]], np.ndarray]]:
        for entry in entries:
            segment, deleted = self.segments[entry.name], self.deleted[entry.name]
            keep = np.setdiff1d(np.arange(entry.rows), deleted)
            for start in range(0, len(keep), CHUNK_ROWS):
                rows = keep[start : start + CHUNK_ROWS]
                yield segment.items(rows.tolist()), segment.vectors.rows(rows)

    def _live_count(self, entry: SegmentEntry) -> int:
        return entry.rows - len(self.deleted[entry.name])

    def _retire(self, entry: SegmentEntry) -> None:
        self.entries.remove(entry)
        self._retired += [entry.name] + ([entry.deleted] if entry.deleted else [])
        self._changed.discard(entry.name)

    def _named_files(self) -> set[str]:
        return {INDEX_FILE} | {e.name for e in self.entries} | {e.deleted for e in self.entries if e.deleted}


def _load_rows(folder: Path, name: str | None) -> np.ndarray:
    return np.zeros(0, np.int64) if name is None else np.load(folder / name, allow_pickle=False)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_leftovers(folder: Path, committed: set[str]) -> None:
    """Delete what no commit names and no running writer is still writing: a killed writer's segments, deletion
    and temporary files, a migrated index's old files."""
    for path in folder.iterdir():
        match = _OURS.search(path.name)
        if path.name in committed or not match:
            continue
        pid = match.group(1) or match.group(2)
        if pid is None or int(pid) == os.getpid() or not writer_running(int(pid)):
            _remove(path)


def _migrated(folder: Path) -> EmbeddingIndex:
    """A format-2 index (items.json, one float32 embeddings file) rewritten as one segment and committed."""
    meta = json.loads((folder / LEGACY_ITEMS_FILE).read_text())
    legacy = folder / meta.get("embeddings", "embeddings.npy")
    embeddings = np.load(legacy, mmap_mode="r", allow_pickle=False)
    index = EmbeddingIndex(folder, meta["model_id"], None, [])
    items = meta["items"]
    if len(embeddings) != len(items):
        raise ArtifactError(f"{folder}: {len(embeddings)} embeddings for {len(items)} items; rebuild the index")
    chunks = ((items[s : s + CHUNK_ROWS], np.asarray(embeddings[s : s + CHUNK_ROWS]))
              for s in range(0, len(items), CHUNK_ROWS))  # fmt: skip
    index.add_chunks(len(items), chunks)
    index.commit()
    (folder / LEGACY_ITEMS_FILE).unlink()
    legacy.unlink()
    return index

"""A persistent multi-embedding index with two-stage search.

    index/
      embeddings-<pid>-<token>.npy   [N, K+1, D] float32
      items.json                     the model, the embeddings file's name, and each item's path (as given and
                                     resolved) with size and mtime

Search takes a shortlist by global embedding (one matrix-vector product), then
re-ranks it with the full AGFF fused score.

Every file is written to a temporary name and renamed. A save writes a new
embeddings file, then renames items.json over the old one: that rename is the
commit, so a writer killed at any moment leaves the previous index or the new
one, never embeddings of one with items of the other. The next writer removes
what a killed one left behind (temporary files, an uncommitted embeddings file).
One writer at a time: files whose writer is still running are kept.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agff_deploy.atomic_files import write_atomically, writer_running
from agff_deploy.errors import ArtifactError, MissingFileError

ITEMS_FILE = "items.json"
LEGACY_EMBEDDINGS_FILE = "embeddings.npy"  # version-1 indexes
_WRITER_PID = re.compile(r"^embeddings-(\d+)-|\.tmp-(\d+)$")


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


def _remove_leftovers(folder: Path, committed: str | None) -> None:
    """Delete temporary and uncommitted files of writers no longer running (killed mid-save)."""
    for path in folder.iterdir():
        match = _WRITER_PID.search(path.name)
        if path.name == committed or not match:
            continue
        pid = int(match.group(1) or match.group(2))
        if pid == os.getpid() or not writer_running(pid):
            path.unlink(missing_ok=True)


@dataclass
class EmbeddingIndex:
    model_id: str
    items: list[dict[str, Any]] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    embeddings_file: str | None = None  # the file items.json names, once saved or loaded

    @classmethod
    def load(cls, folder: str | Path) -> EmbeddingIndex:
        folder = Path(folder)
        items_path = folder / ITEMS_FILE
        if not items_path.is_file():
            raise MissingFileError(
                f"{items_path} not found: build an index with `agff-run index FOLDER --index {folder}`"
            )
        meta = json.loads(items_path.read_text())
        name = meta.get("embeddings", LEGACY_EMBEDDINGS_FILE)
        embeddings = np.load(folder / name, allow_pickle=False)
        if len(embeddings) != len(meta["items"]):
            raise ArtifactError(
                f"{folder}: {len(embeddings)} embeddings for {len(meta['items'])} items; rebuild the index"
            )
        return cls(meta["model_id"], meta["items"], embeddings, name)

    @classmethod
    def open_or_create(cls, folder: str | Path, model_id: str) -> EmbeddingIndex:
        """The index to update, after removing what killed writers left in its folder."""
        folder = Path(folder)
        if not (folder / ITEMS_FILE).is_file():
            index = cls(model_id)
        else:
            index = cls.load(folder)
            index.require_model(model_id)
        if folder.is_dir():
            _remove_leftovers(folder, index.embeddings_file)
        return index

    def require_model(self, model_id: str) -> None:
        if model_id != self.model_id:
            raise ArtifactError(
                "this index was built with another model (weights sha256 "
                f"{self.model_id[:12]}…, the engine's model is {model_id[:12]}…); rebuild it with `agff-run index`"
            )

    def __len__(self) -> int:
        return len(self.items)

    def stale(self, paths: list[Path]) -> list[Path]:
        """Paths that are new or changed since they were indexed."""
        known = {(i["path"], i["size"], i["mtime_ns"]) for i in self.items}
        return [p for p in paths if tuple(file_key(p).values()) not in known]

    def add(self, paths: list[Path], embeddings: np.ndarray) -> None:
        """Add (or replace) items; replaced paths drop their old rows."""
        keys = [{**file_key(p), "given": str(p)} for p in paths]
        replaced = {k["path"] for k in keys}
        keep = [i for i, item in enumerate(self.items) if item["path"] not in replaced]
        old = self.embeddings[keep] if self.embeddings is not None and keep else None
        self.items = [self.items[i] for i in keep] + keys
        new = embeddings.astype(np.float32)
        self.embeddings = new if old is None else np.concatenate([old, new])

    def save(self, folder: str | Path) -> None:
        """A new embeddings file, then items.json naming it (the commit), then the old embeddings file goes."""
        folder = Path(folder)
        previous = self.embeddings_file
        name = f"embeddings-{os.getpid()}-{secrets.token_hex(4)}.npy"
        embeddings = self.embeddings if self.embeddings is not None else np.zeros((0, 0, 0), np.float32)
        write_atomically(folder / name, lambda f: np.save(f, embeddings))
        meta = {"version": 2, "model_id": self.model_id, "embeddings": name, "items": self.items}
        write_atomically(folder / ITEMS_FILE, lambda f: f.write(json.dumps(meta).encode()))
        self.embeddings_file = name
        if previous:
            (folder / previous).unlink(missing_ok=True)

    def search(self, query: np.ndarray, score, query_is_text: bool, top_k: int = 10, shortlist: int = 100):
        """Top `top_k` (path to show, fused score) for one query `[K+1, D]`.

        `score(a, b)` is the fused similarity; index items are images, so a text
        query is scored as (image, text), the pairing the model was trained on.
        """
        if self.embeddings is None or not len(self.items):
            return []
        coarse = self.embeddings[:, 0] @ query[0]
        shortlist = min(max(shortlist, top_k), len(coarse))
        candidates = np.argpartition(-coarse, shortlist - 1)[:shortlist]
        shortlisted = self.embeddings[candidates]
        fine = score(shortlisted, query[None])[:, 0] if query_is_text else score(query[None], shortlisted)[0]
        order = np.argsort(-fine)[:top_k]
        return [(shown_path(self.items[candidates[i]]), float(fine[i])) for i in order]

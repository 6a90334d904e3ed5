"""A persistent multi-embedding index with two-stage search.

    index/
      embeddings.npy   [N, K+1, D] float32
      items.json       paths with size and mtime, and the model the embeddings came from

Search takes a shortlist by global embedding (one matrix-vector product), then
re-ranks it with the full AGFF fused score. Files are written to temporary
names and renamed, items.json last, so a killed update leaves the old index.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.json"


def file_key(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class EmbeddingIndex:
    model_id: str
    items: list[dict[str, Any]] = field(default_factory=list)
    embeddings: np.ndarray | None = None

    @classmethod
    def load(cls, folder: str | Path) -> EmbeddingIndex:
        folder = Path(folder)
        items_path = folder / ITEMS_FILE
        if not items_path.is_file():
            raise FileNotFoundError(
                f"{items_path} not found: build an index with `agff-run index FOLDER --index {folder}`"
            )
        meta = json.loads(items_path.read_text())
        embeddings = np.load(folder / EMBEDDINGS_FILE, allow_pickle=False)
        if len(embeddings) != len(meta["items"]):
            raise ValueError(
                f"{folder}: {len(embeddings)} embeddings for {len(meta['items'])} items; rebuild the index"
            )
        return cls(meta["model_id"], meta["items"], embeddings)

    @classmethod
    def open_or_create(cls, folder: str | Path, model_id: str) -> EmbeddingIndex:
        folder = Path(folder)
        if not (folder / ITEMS_FILE).is_file():
            return cls(model_id)
        index = cls.load(folder)
        index.require_model(model_id)
        return index

    def require_model(self, model_id: str) -> None:
        if model_id != self.model_id:
            raise ValueError(
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
        keys = [file_key(p) for p in paths]
        replaced = {k["path"] for k in keys}
        keep = [i for i, item in enumerate(self.items) if item["path"] not in replaced]
        old = self.embeddings[keep] if self.embeddings is not None and keep else None
        self.items = [self.items[i] for i in keep] + keys
        new = embeddings.astype(np.float32)
        self.embeddings = new if old is None else np.concatenate([old, new])

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp_embeddings = folder / f".{EMBEDDINGS_FILE}.tmp-{os.getpid()}"
        with open(tmp_embeddings, "wb") as f:
            np.save(f, self.embeddings if self.embeddings is not None else np.zeros((0, 0, 0), np.float32))
        tmp_items = folder / f".{ITEMS_FILE}.tmp-{os.getpid()}"
        tmp_items.write_text(json.dumps({"version": 1, "model_id": self.model_id, "items": self.items}))
        os.replace(tmp_embeddings, folder / EMBEDDINGS_FILE)
        os.replace(tmp_items, folder / ITEMS_FILE)

    def search(self, query: np.ndarray, score, query_is_text: bool, top_k: int = 10, shortlist: int = 100):
        """Top `top_k` (path, fused score) for one query `[K+1, D]`.

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
        return [(self.items[candidates[i]]["path"], float(fine[i])) for i in order]

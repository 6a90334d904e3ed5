"""The runner contract every backend follows (after Polygraphy's backends).

A runner owns one graph or engine: `activate()` loads it, `deactivate()` frees
it (both through `with runner:`), and `infer(feeds)` maps input names to numpy
arrays and returns output names to numpy arrays. Nothing above a runner knows
which backend it is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

Feeds = dict[str, np.ndarray]


class ArtifactMismatch(RuntimeError):
    """What a runner loads differs from what the manifest promised."""


class Runner:
    name = "runner"
    max_batch: int | None = None

    def __init__(self) -> None:
        self.active = False

    def activate(self) -> None:
        self.active = True

    def deactivate(self) -> None:
        self.active = False

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def infer(self, feeds: Feeds) -> Feeds:
        raise NotImplementedError

    def __call__(self, feeds: Feeds) -> Feeds:
        if not self.active:
            raise RuntimeError(f"{self.name} is not active: use `with runner:` or call activate() first")
        if self.max_batch is None:
            return self.infer(feeds)
        return infer_in_chunks(self.infer, feeds, self.max_batch)


def infer_in_chunks(infer, feeds: Feeds, max_batch: int) -> Feeds:
    """Split batches larger than `max_batch` (an engine profile's limit) and join the outputs."""
    batch = next(iter(feeds.values())).shape[0]
    if batch <= max_batch:
        return infer(feeds)
    parts = [infer({k: v[i : i + max_batch] for k, v in feeds.items()}) for i in range(0, batch, max_batch)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def verify_sha256(path: Path, expected: str | None, rebuild: str) -> None:
    if expected is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    found = digest.hexdigest()
    if found != expected:
        raise ArtifactMismatch(
            f"{path} does not match its manifest: expected sha256 {expected[:16]}…, found {found[:16]}…; "
            f"rebuild it with `{rebuild}`"
        )

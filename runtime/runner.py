"""The runner contract every backend follows (after Polygraphy's `BaseRunner`).

A runner owns one graph or engine. `activate()` loads it and `deactivate()`
frees it, each at most once however often it is called (also through
`with runner:`). `infer(feed)` checks the feed against the graph contract
(names, dtypes, shapes), splits batches over the backend's limits, times
the call and returns outputs by name. Backends implement only
`activate_impl`, `infer_impl` and `deactivate_impl`; what opens, hashes and
origin-checks an artifact is a loader the runner calls on activation.
Nothing above a runner knows which backend it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np

from agff_deploy.contract import BATCH_DIMS, Feed, GraphSpec
from agff_deploy.errors import ArtifactError
from agff_deploy.manifest import sha256_file

Outputs = dict[str, np.ndarray]
# `typing.Self` is Python 3.11+: the runtime also runs on 3.10 (Jetson JetPack 6).
_RunnerT = TypeVar("_RunnerT", bound="Runner")


class ArtifactMismatch(ArtifactError):
    """What a runner loads differs from what the manifest promised."""


class Runner:
    name = "runner"

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec
        self.is_active = False
        self.inference_time: float | None = None
        # Largest size per batch dimension the backend takes in one call (an engine profile's maximum).
        self.limits: dict[str, int] = {}

    def activate_impl(self) -> None:
        """Load what `infer_impl` needs."""

    def infer_impl(self, feed: Feed) -> Outputs:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        """Free what `activate_impl` loaded, and put back anything it changed outside this runner."""

    def activate(self) -> None:
        if self.is_active:
            return
        self.activate_impl()
        self.is_active = True

    def deactivate(self) -> None:
        if not self.is_active:
            return
        self.is_active = False
        self.inference_time = None
        self.deactivate_impl()

    def __enter__(self: _RunnerT) -> _RunnerT:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def infer(self, feed: Feed) -> Outputs:
        """Outputs by name for a feed the contract accepts; batches over `limits` are split and rejoined."""
        if not self.is_active:
            raise RuntimeError(
                f"{self.name} runner of {self.spec.name} is not active: use `with runner:` or activate()"
            )
        self.spec.check_feed(feed)
        started = time.perf_counter()
        outputs = infer_in_chunks(self.infer_impl, feed, self.spec, self.limits)
        self.inference_time = time.perf_counter() - started
        return outputs

    def last_inference_time(self) -> float | None:
        """Seconds the last `infer` took, splitting included; None before the first since activation."""
        return self.inference_time


def infer_in_chunks(
    infer: Callable[[Feed], Outputs], feed: Feed, spec: GraphSpec, limits: Mapping[str, int]
) -> Outputs:
    """`infer(feed)`, split along every batch dimension that exceeds its limit and joined along the same dimension."""
    for dim in BATCH_DIMS:
        size = _size_of(feed, spec, dim)
        limit = limits.get(dim)
        if limit is None or size is None or size <= limit:
            continue
        parts = [
            infer_in_chunks(infer, _slice(feed, spec, dim, start, start + limit), spec, limits)
            for start in range(0, size, limit)
        ]
        return {
            out.name: np.concatenate([p[out.name] for p in parts], axis=out.shape.index(dim)) for out in spec.outputs
        }
    return infer(feed)


def _size_of(feed: Feed, spec: GraphSpec, dim: str) -> int | None:
    for tensor in spec.inputs:
        axis = tensor.axis_of(dim)
        if axis is not None:
            return int(feed[tensor.name].shape[axis])
    return None


def _slice(feed: Feed, spec: GraphSpec, dim: str, start: int, stop: int) -> Feed:
    sliced = dict(feed)
    for tensor in spec.inputs:
        axis = tensor.axis_of(dim)
        if axis is not None:
            index = [slice(None)] * feed[tensor.name].ndim
            index[axis] = slice(start, stop)
            sliced[tensor.name] = feed[tensor.name][tuple(index)]
    return sliced


def verify_sha256(path: Path, expected: str | None, rebuild: str) -> None:
    if expected is None:
        return
    found = sha256_file(path)
    if found != expected:
        raise ArtifactMismatch(
            f"{path} does not match its manifest: expected sha256 {expected[:16]}…, found {found[:16]}…; "
            f"rebuild it with `{rebuild}`"
        )

"""The parity gate's inputs and reference, and their record in the bundle: input sets and PyTorch's outputs on them.

With it a bundle is gated where no checkpoint and no torch are: `export.to_trt`
holds engines to PyTorch on the Jetson itself, `python -m export.check` re-gates
a copied bundle, and a device bundle can leave its fp32 graphs out. The record
is one compressed `.npz` of plain arrays, read with `allow_pickle=False`: sets A
and B, the held-out pairs' feeds when `--agreement-pairs` is set (most of its
size: up to pairs x 3 x H x W float32 pixels before compression) and PyTorch's
outputs.

Keys: `feed/<graph>/<index>/<tensor>` for every feed the gate gives `graph`, in
`InputSets.feeds` order (one per input set, then the held-out pairs' chunks),
`output/<graph>/<index>` for PyTorch's output on it, and `sets` for the input
sets' names.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agff_deploy.contract import ENCODERS, Feed, GraphSpec
from agff_deploy.errors import ArtifactError, MissingFileError
from agff_deploy.manifest import Fusion, GateRecord, sha256_file
from runtime.runner import Outputs, Runner
from runtime.scoring import fused_similarity

GATE_FILE = "gate.npz"


@dataclass(frozen=True)
class HeldOutPairs:
    """Held-out scenes and their captions in chunks, for top-1 retrieval agreement under the fused score."""

    feeds: Mapping[str, list[Feed]]  # encoder name -> chunks
    fusion: Fusion

    def top1(self, images: np.ndarray, texts: np.ndarray) -> np.ndarray:
        """Each image's best caption under the fused score (the model's own fusion parameters)."""
        bias = np.asarray(self.fusion.pattern_bias, np.float32)
        return fused_similarity(images, texts, self.fusion.t_in, self.fusion.t_f, bias).argmax(1)


@dataclass(frozen=True)
class InputSets:
    """Everything the gate feeds: named sets of one feed per graph, and the held-out pairs (None: skipped)."""

    sets: Mapping[str, Mapping[str, Feed]]  # set name -> graph name -> feed
    held_out: HeldOutPairs | None
    agreement: str = ""  # why the held-out pairs are as many as they are

    def feeds(self, graph: str) -> list[Feed]:
        held_out = self.held_out.feeds.get(graph, []) if self.held_out else []
        return [feeds[graph] for feeds in self.sets.values()] + held_out


class RecordedRunner(Runner):
    """Another runner's outputs on the feeds it was given, kept: the gate's reference once its model is freed.

    `record` activates the source runner, runs it on every feed and deactivates it; a bundle's stored gate record
    (`export.gate_reference`) is read back into one. `infer` answers a recorded feed by its contents and refuses
    any other.
    """

    name = "recorded"

    def __init__(self, spec: GraphSpec, outputs: Mapping[str, Outputs], source_name: str) -> None:
        super().__init__(spec)
        self.source_name = source_name
        self.outputs = dict(outputs)

    @classmethod
    def record(cls, source: Runner, feeds: Iterable[Feed]) -> RecordedRunner:
        recorded = cls(source.spec, {}, source.name)
        recorded.record_more(source, feeds)
        return recorded

    def record_more(self, source: Runner, feeds: Iterable[Feed]) -> None:
        """Add `source`'s outputs on `feeds` (its spec is this runner's)."""
        with source:
            self.outputs.update({feed_key(feed): source.infer(feed) for feed in feeds})

    def recorded(self, feed: Feed) -> np.ndarray:
        """The recorded output on `feed`, without activating anything."""
        return self.infer_impl(feed)[self.spec.output]

    def infer_impl(self, feed: Feed) -> Outputs:
        try:
            return self.outputs[feed_key(feed)]
        except KeyError:
            raise KeyError(f"{self.spec.name}: no {self.source_name} output was recorded for this feed") from None


def feed_key(feed: Feed) -> str:
    digest = hashlib.sha256()
    for name in sorted(feed):
        array = np.ascontiguousarray(feed[name])
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_gate_reference(folder: Path, reference: Mapping[str, RecordedRunner], input_sets: InputSets) -> GateRecord:
    """Write `folder/gate.npz` (atomically) and return the manifest's record of it."""
    arrays: dict[str, np.ndarray] = {}
    for graph, runner in reference.items():
        for index, feed in enumerate(input_sets.feeds(graph)):
            arrays.update({f"feed/{graph}/{index}/{name}": array for name, array in feed.items()})
            arrays[f"output/{graph}/{index}"] = runner.recorded(feed)
    arrays["sets"] = np.array(list(input_sets.sets))
    path = folder / GATE_FILE
    tmp = folder / f".{GATE_FILE}.tmp"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(path)
    return GateRecord(GATE_FILE, sha256_file(path), path.stat().st_size, input_sets.agreement)


def load_gate_reference(
    bundle: Path, record: GateRecord | None, specs: Mapping[str, GraphSpec], fusion: Fusion
) -> tuple[dict[str, Runner], InputSets]:
    """The recorded PyTorch reference runners (by pipeline) and the input sets they answer."""
    path = bundle / (record.file if record else GATE_FILE)
    if record is None:
        raise ArtifactError(f"{bundle} carries no gate record: re-export it with `python -m export.to_onnx CKPT`")
    if not path.is_file():
        raise MissingFileError(f"{path} is missing: copy the whole bundle folder, {GATE_FILE} included")
    if path.stat().st_size != record.bytes or sha256_file(path) != record.sha256:
        raise ArtifactError(f"{path} is not the gate record this bundle was exported with: copy it again")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ArtifactError(f"{path} cannot be read ({err}): copy it again or re-export the bundle") from err
    return _runners(arrays, specs), _input_sets(arrays, fusion, record.agreement)


def _feeds(arrays: Mapping[str, np.ndarray], graph: str) -> list[dict[str, np.ndarray]]:
    feeds: dict[int, dict[str, np.ndarray]] = {}
    for key, array in arrays.items():
        if key.startswith(f"feed/{graph}/"):
            index, tensor = key.split("/")[2:]
            feeds.setdefault(int(index), {})[tensor] = array
    return [feeds[i] for i in sorted(feeds)]


def _graphs(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return sorted({key.split("/")[1] for key in arrays if key.startswith("output/")})


def _runners(arrays: Mapping[str, np.ndarray], specs: Mapping[str, GraphSpec]) -> dict[str, Runner]:
    runners: dict[str, Runner] = {}
    for graph in _graphs(arrays):
        spec = specs[graph]
        outputs = {
            feed_key(feed): {spec.output: arrays[f"output/{graph}/{index}"]}
            for index, feed in enumerate(_feeds(arrays, graph))
        }
        runners[graph] = RecordedRunner(spec, outputs, "pytorch (recorded at export)")
    return runners


def _input_sets(arrays: Mapping[str, np.ndarray], fusion: Fusion, agreement: str) -> InputSets:
    names = [str(name) for name in arrays["sets"]]
    feeds = {graph: _feeds(arrays, graph) for graph in _graphs(arrays)}
    sets = {name: {graph: feeds[graph][i] for graph in feeds} for i, name in enumerate(names)}
    held_out = {graph: feeds[graph][len(names) :] for graph in ENCODERS if len(feeds.get(graph, [])) > len(names)}
    return InputSets(sets, HeldOutPairs(held_out, fusion) if held_out else None, agreement)

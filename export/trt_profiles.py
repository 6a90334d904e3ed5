"""TensorRT optimisation profiles: the (min, opt, max) shape of every engine input, and the engines' file names.

The shapes are the graph contract's, with each dynamic dimension spanning the
range the bundle was exported for (`--batch` within it). `export.to_trt`
builds engines with them and `export.engine_memory` estimates their memory at
the maximum shapes.
"""

from __future__ import annotations

from agff_deploy.contract import GRAPHS, IMAGE_ENCODER, SCORER, TEXT_ENCODER
from agff_deploy.manifest import Manifest

ENGINE_FILES = {IMAGE_ENCODER.name: "model.plan", TEXT_ENCODER.name: "text_encoder.plan", SCORER.name: "scorer.plan"}
SCORER_CANDIDATES = (1, 1024, 65536)
Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


def profile_shapes(manifest: Manifest, graph: str, batch: tuple[int, int, int]) -> Profile:
    """(min, opt, max) shape of every input of `graph`: the contract's shapes, dynamic dims from the manifest."""
    lo, opt, hi = batch
    length = manifest.dims.image_length if graph == IMAGE_ENCODER.name else manifest.dims.text_length
    ranges = {
        "batch": batch,
        "length": (length.min, min(length.max, length.min + 16), length.max),
        "queries": (1, opt, hi),
        "candidates": SCORER_CANDIDATES,
    }
    spec = GRAPHS[graph].resolve(manifest.sizes())

    def at(i: int, shape: tuple[int | str, ...]) -> Shape:
        return tuple(ranges[d][i] if isinstance(d, str) else d for d in shape)

    return {t.name: (at(0, t.shape), at(1, t.shape), at(2, t.shape)) for t in spec.inputs}

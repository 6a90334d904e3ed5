"""TensorRT optimisation profiles: the (min, opt, max) shape of every engine input, and the engines' file names.

The shapes are the graph contract's, with each dynamic dimension spanning the
range the bundle was exported for (`--batch` within it). `export.to_trt`
builds engines with them and `export.engine_memory` estimates their memory at
the maximum shapes.
"""

from __future__ import annotations

from agff_deploy.contract import LANGUAGE_ENCODER, SCORER, STORED, VISION_ENCODER
from agff_deploy.manifest import Manifest

# The language encoder is the model's bulk and what every item runs: `agff-run --engine model.plan`.
ENGINE_FILES = {VISION_ENCODER.name: "vision.plan", LANGUAGE_ENCODER.name: "model.plan", SCORER.name: "scorer.plan"}
# The scorer's candidate profile. The runner splits a larger candidate set into calls of at most the profile's
# maximum, so a bigger maximum buys nothing but memory: at 2B width (K+1 = 5, D = 1536) 65,536 candidates needed
# about 6.8 GiB of activations (export.engine_memory), more than the whole language engine at batch 8.
SCORER_CANDIDATES = (1, 1024, 4096)
Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


def profile_shapes(manifest: Manifest, graph: str, batch: tuple[int, int, int]) -> Profile:
    """(min, opt, max) shape of every input of stored `graph`: the contract's shapes, dynamic dims from the manifest.

    One language-encoder profile spans text items (one placeholder image feature) and image items. At native
    resolution the image-token count spans one merge block to the most an image gives, optimised at the midpoint
    (as TensorRT Edge-LLM's vision profile is); at a fixed size it is that size's."""
    lo, opt, hi = batch
    text, image = manifest.dims.text_length, manifest.dims.image_length
    shortest, longest = min(text.min, image.min), max(text.max, image.max)
    tokens = manifest.image.num_image_tokens
    fewest = 1 if manifest.image.resize == "native" else tokens
    typical = (fewest + tokens) // 2
    block = manifest.image.merge_size**2
    ranges = {
        "batch": batch,
        "length": (shortest, min(longest, shortest + 16), longest),
        "patches": (fewest * block, typical * block, tokens * block),
        "image_tokens": (1, typical, tokens),
        "queries": (1, opt, hi),
        "candidates": SCORER_CANDIDATES,
    }
    spec = STORED[graph].resolve(manifest.sizes())

    def at(i: int, shape: tuple[int | str, ...]) -> Shape:
        return tuple(ranges[d][i] if isinstance(d, str) else d for d in shape)

    return {t.name: (at(0, t.shape), at(1, t.shape), at(2, t.shape)) for t in spec.inputs}

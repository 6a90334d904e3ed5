"""The item pipelines over the stored graphs: what the Embedder, the gate and the servers run.

A bundle stores a vision encoder and one language encoder (agff_deploy.contract). The image encoder runs both:
patches -> image features -> the language encoder with the item's tokens. The text encoder runs the language
encoder alone, with a placeholder feature no token reads. Both hold the same language runner through a `Lease`,
so its session or engine is loaded once, stays loaded while either pipeline is active, and a text-only user never
activates the vision encoder. Each pipeline is a `Runner` with the pipeline's contract, so nothing above it knows
that two graphs run.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agff_deploy.contract import (
    IMAGE_ENCODER,
    IMAGE_GRID,
    LANGUAGE_ENCODER,
    PIXEL_VALUES,
    SCORER,
    TEXT_ENCODER,
    VISION_ENCODER,
    Feed,
    GraphSpec,
    TensorSpec,
)
from agff_deploy.feeds import language_feed, vision_feed

from .runner import Outputs, Runner


class Lease:
    """One runner shared by several pipelines: activated by the first that needs it, freed after the last."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.holders = 0

    def acquire(self) -> None:
        if self.holders == 0:
            self.runner.activate()
        self.holders += 1

    def release(self) -> None:
        self.holders -= 1
        if self.holders == 0:
            self.runner.deactivate()


class PipelineRunner(Runner):
    """A pipeline over leased stored-graph runners; subclasses say how a feed flows through them."""

    def __init__(self, spec: GraphSpec, leases: Mapping[str, Lease]) -> None:
        super().__init__(spec)
        self.leases = dict(leases)
        self.name = next(iter(self.leases.values())).runner.name

    def activate_impl(self) -> None:
        for lease in self.leases.values():
            lease.acquire()

    def deactivate_impl(self) -> None:
        for lease in reversed(self.leases.values()):
            lease.release()

    def run(self, graph: str, feed: Feed) -> Outputs:
        return self.leases[graph].runner.infer(feed)

    def language(self, feed: Feed, vision: Outputs | None = None) -> Outputs:
        """The language encoder on an item pipeline's feed (and its images' vision outputs)."""
        runner = self.leases[LANGUAGE_ENCODER.name].runner
        return runner.infer(language_feed(feed, runner.spec, vision))


class ImageEncoderRunner(PipelineRunner):
    def infer_impl(self, feed: Feed) -> Outputs:
        return self.language(feed, self.vision_outputs(feed))

    def vision_outputs(self, feed: Feed) -> Outputs:
        """The vision encoder's outputs for a batch of images. Where it takes one image per call (ONNX Runtime on
        the CPU), each image goes in with its own patches only, not its batch's padded row, so an image costs the
        same in a batch of larger ones as alone; the outputs are padded back with zeros along their image-token
        axis, which no token reads."""
        vision = self.leases[VISION_ENCODER.name].runner
        if vision.limits.get("batch") != 1:
            return self.run(VISION_ENCODER.name, vision_feed(feed))
        pixels, grids = feed[PIXEL_VALUES.name], feed[IMAGE_GRID.name]
        parts = [
            self.run(
                VISION_ENCODER.name, {PIXEL_VALUES.name: pixels[i : i + 1, : h * w], IMAGE_GRID.name: grids[i : i + 1]}
            )
            for i, (h, w) in enumerate(grids)
        ]
        return {tensor.name: _padded([p[tensor.name] for p in parts], tensor) for tensor in vision.spec.outputs}


def _padded(parts: list[np.ndarray], tensor: TensorSpec) -> np.ndarray:
    """One-image outputs joined into a batch, each zero-padded along the tensor's image-token axis."""
    axis = tensor.axis_of("image_tokens")
    shape = list(parts[0].shape)
    shape[0], shape[axis] = len(parts), max(p.shape[axis] for p in parts)
    joined = np.zeros(shape, np.float32)
    for i, part in enumerate(parts):
        joined[(i, *(slice(0, n) for n in part.shape[1:]))] = part[0]
    return joined


class TextEncoderRunner(PipelineRunner):
    def infer_impl(self, feed: Feed) -> Outputs:
        return self.language(feed)


def item_runners(stored: Mapping[str, Runner], specs: Mapping[str, GraphSpec]) -> dict[str, Runner]:
    """The pipelines (by `specs`' names) that `stored` runners can serve: the image encoder needs both encoders, the
    scorer is its own pipeline."""
    leases = {name: Lease(runner) for name, runner in stored.items() if name != SCORER.name}

    def pick(*names: str) -> dict[str, Lease]:
        return {name: leases[name] for name in names}

    runners: dict[str, Runner] = {}
    if LANGUAGE_ENCODER.name in leases:
        runners[TEXT_ENCODER.name] = TextEncoderRunner(specs[TEXT_ENCODER.name], pick(LANGUAGE_ENCODER.name))
        if VISION_ENCODER.name in leases:
            vision_language = pick(VISION_ENCODER.name, LANGUAGE_ENCODER.name)
            runners[IMAGE_ENCODER.name] = ImageEncoderRunner(specs[IMAGE_ENCODER.name], vision_language)
    if SCORER.name in stored:
        runners[SCORER.name] = stored[SCORER.name]
    return {name: runners[name] for name in specs if name in runners}

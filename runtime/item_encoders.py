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
    IMAGE_FEATURES,
    IMAGE_GRID,
    LANGUAGE_ENCODER,
    PIXEL_VALUES,
    SCORER,
    TEXT_ENCODER,
    VISION_ENCODER,
    Feed,
    GraphSpec,
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


class ImageEncoderRunner(PipelineRunner):
    def infer_impl(self, feed: Feed) -> Outputs:
        return self.run(LANGUAGE_ENCODER.name, language_feed(feed, self.image_features(feed)))

    def image_features(self, feed: Feed) -> np.ndarray:
        """The vision encoder's features for a batch of images. Where it takes one image per call (ONNX Runtime on
        the CPU), each image goes in with its own patches only, not its batch's padded row, so an image costs the
        same in a batch of larger ones as alone; the features are padded back with zeros, which no token reads."""
        vision = self.leases[VISION_ENCODER.name].runner
        if vision.limits.get("batch") != 1:
            return self.run(VISION_ENCODER.name, vision_feed(feed))[IMAGE_FEATURES.name]
        pixels, grids = feed[PIXEL_VALUES.name], feed[IMAGE_GRID.name]
        parts = [
            self.run(
                VISION_ENCODER.name, {PIXEL_VALUES.name: pixels[i : i + 1, : h * w], IMAGE_GRID.name: grids[i : i + 1]}
            )[IMAGE_FEATURES.name]
            for i, (h, w) in enumerate(grids)
        ]
        features = np.zeros((len(parts), max(p.shape[1] for p in parts), parts[0].shape[2]), np.float32)
        for i, part in enumerate(parts):
            features[i, : part.shape[1]] = part[0]
        return features


class TextEncoderRunner(PipelineRunner):
    def __init__(self, spec: GraphSpec, leases: Mapping[str, Lease], hidden: int) -> None:
        super().__init__(spec, leases)
        self.hidden = hidden

    def infer_impl(self, feed: Feed) -> Outputs:
        return self.run(LANGUAGE_ENCODER.name, language_feed(feed, hidden=self.hidden))


def item_runners(stored: Mapping[str, Runner], specs: Mapping[str, GraphSpec], hidden: int) -> dict[str, Runner]:
    """The pipelines (by `specs`' names) that `stored` runners can serve: the image encoder needs both encoders, the
    scorer is its own pipeline."""
    leases = {name: Lease(runner) for name, runner in stored.items() if name != SCORER.name}

    def pick(*names: str) -> dict[str, Lease]:
        return {name: leases[name] for name in names}

    runners: dict[str, Runner] = {}
    if LANGUAGE_ENCODER.name in leases:
        runners[TEXT_ENCODER.name] = TextEncoderRunner(specs[TEXT_ENCODER.name], pick(LANGUAGE_ENCODER.name), hidden)
        if VISION_ENCODER.name in leases:
            vision_language = pick(VISION_ENCODER.name, LANGUAGE_ENCODER.name)
            runners[IMAGE_ENCODER.name] = ImageEncoderRunner(specs[IMAGE_ENCODER.name], vision_language)
    if SCORER.name in stored:
        runners[SCORER.name] = stored[SCORER.name]
    return {name: runners[name] for name in specs if name in runners}

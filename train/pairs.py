"""Training pairs and the batch sources that serve them, deterministically by step.

A batch depends only on (seed, step), so a resumed run sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from agff_deploy.errors import InputError
from agff_deploy.images import open_image
from agff_deploy.scenes import (
    ATTRIBUTES,
    DIRECTIONS,
    GLYPHS,
    HELD_OUT_COMBOS,
    OPPOSITE,
    SCENES,
    Scene,
    change_attribute,
    make_scene,
    mirrored,
)

ImageRef = np.ndarray | Path | None
TASKS = ("i2t", "i2t-contrast", "vqa", "cls")


@dataclass(frozen=True)
class Pair:
    """A query and its positive candidate; either side is text, image, or both."""

    query_text: str
    query_image: ImageRef
    pos_text: str
    pos_image: ImageRef = None

    @property
    def candidate_key(self) -> str:
        """Identity of the candidate: equal keys in one batch are not negatives of each other."""
        image = self.pos_image
        tag = str(image) if isinstance(image, Path) else ("<array>" if image is not None else "")
        return self.pos_text + "\x00" + tag


class BatchSource(Protocol):
    def batch(self, step: int) -> list[Pair]: ...


def load_image(ref: ImageRef) -> np.ndarray | Image.Image | None:
    """A file decoded as the runtime decodes it (upright, transparency on white), so training sees its pixels."""
    if isinstance(ref, Path):
        return open_image(ref)[0]
    return ref


def scene_pair(task: str, seed: int, image_size: int, held_out: bool = False) -> Pair:
    """One MMEB-style pair from scene `seed`: image->caption, image+question->answer, or classification."""
    scene = make_scene(seed, held_out=held_out)
    image = scene.render(image_size)
    if task == "i2t":
        return Pair("", image, scene.caption())
    if task == "vqa":
        question, answer = random.Random(seed).choice(scene.questions())
        return Pair(question, image, answer)
    if task == "cls":
        return Pair("", image, class_label(scene.category))
    raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")


def class_label(category: str) -> str:
    return f"a photo of a {category} scene"


CLASS_LABELS = tuple(class_label(c) for c in SCENES)


def parse_task_mix(text: str) -> dict[str, float]:
    """'i2t:0.8,vqa:0.2' -> {'i2t': 0.8, 'vqa': 0.2}."""
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition(":")
        name = name.strip()
        if name not in TASKS:
            raise InputError(f"--tasks: unknown task {name!r}; tasks are {', '.join(TASKS)}")
        try:
            mix[name] = float(weight) if weight else 1.0
        except ValueError:
            raise InputError(f"--tasks: the weight of {name}, {weight!r}, is not a number") from None
    return mix


CONTRASTS = ATTRIBUTES + ("mirror",)


def contrast_twins(scene: Scene, rng: random.Random) -> tuple[Scene, Scene] | None:
    """The scene, made to show a contrast drawn uniformly from `CONTRASTS`, and its twin differing in that
    alone; both inside the training combinations (None if no contrast fits).

    Drawn over contrasts rather than over the scene's applicable attributes, so the patterns most
    scenes cannot show (a triangle's direction, a glyph, a mirrored pair of groups) get as many hard
    negatives as colour does.
    """
    for contrast in rng.sample(CONTRASTS, len(CONTRASTS)):
        shown = showing(scene, contrast, rng)
        if shown is None:
            continue
        twin = mirrored(shown) if contrast == "mirror" else change_attribute(shown, contrast, rng)
        if twin is not None and not _held_out(shown) and not _held_out(twin):
            return shown, twin
    return None


def showing(scene: Scene, contrast: str, rng: random.Random) -> Scene | None:
    """The scene changed as little as possible so that `contrast` can be shown (None if it cannot)."""
    first = scene.groups[0]
    if contrast == "direction" and first.direction is None:
        first = dataclasses.replace(first, shape="triangle", direction=rng.choice(DIRECTIONS))
    elif contrast == "glyph" and first.glyph is None:
        first = dataclasses.replace(first, size="large", count=1, glyph=rng.choice(GLYPHS))
    elif contrast == "position":
        return dataclasses.replace(scene, groups=(first,))
    elif contrast == "mirror":
        if len(scene.groups) < 2:
            return None
        side = rng.choice(("left", "right"))
        second = dataclasses.replace(scene.groups[1], position=OPPOSITE[side])
        return dataclasses.replace(scene, groups=(dataclasses.replace(first, position=side), second))
    return dataclasses.replace(scene, groups=(first,) + scene.groups[1:])


def _held_out(scene: Scene) -> bool:
    return bool({(g.shape, g.colour) for g in scene.groups} & HELD_OUT_COMBOS)


def contrast_pairs(first: int, batch_size: int, image_size: int, rng: random.Random) -> list[Pair]:
    """image->caption pairs in twins that differ in one pattern: in-batch hard negatives by construction."""
    pairs: list[Pair] = []
    seed = first
    while len(pairs) < batch_size:
        scene = make_scene(seed)
        seed += 1
        twins = contrast_twins(scene, rng) or (scene,)
        pairs += [Pair("", s.render(image_size), s.caption()) for s in twins]
    return pairs[:batch_size]


class SyntheticPairs:
    """Fresh synthetic scenes every step; one task per step, drawn by weight."""

    def __init__(self, seed: int, batch_size: int, image_size: int, tasks: dict[str, float]) -> None:
        self.seed = seed
        self.batch_size = batch_size
        self.image_size = image_size
        self.tasks = tasks

    def batch(self, step: int) -> list[Pair]:
        rng = random.Random(self.seed * 1_000_003 + step)
        task = rng.choices(list(self.tasks), weights=list(self.tasks.values()))[0]
        first = (self.seed * 100_000 + step) * self.batch_size
        if task == "i2t-contrast":
            return contrast_pairs(first, self.batch_size, self.image_size, rng)
        return [scene_pair(task, first + j, self.image_size) for j in range(self.batch_size)]


class ListPairs:
    """A fixed list of pairs (MMEB-train rows), sampled without replacement per step."""

    def __init__(self, pairs: list[Pair], seed: int, batch_size: int) -> None:
        if len(pairs) < 2:
            raise InputError(f"need at least 2 training pairs for in-batch negatives, got {len(pairs)}")
        self.pairs = pairs
        self.seed = seed
        self.batch_size = min(batch_size, len(pairs))

    def batch(self, step: int) -> list[Pair]:
        rng = random.Random(self.seed * 1_000_003 + step)
        return [self.pairs[i] for i in rng.sample(range(len(self.pairs)), self.batch_size)]

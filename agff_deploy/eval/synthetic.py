"""Synthetic benchmarks on held-out scenes (attribute combinations never trained on, a seed of their own).

`synthetic-mmvp` follows MMVP-VLM: for each of nine visual patterns, pairs of
images that differ only in that pattern, each with its own statement; a pair
scores only if both statements pick their own image. `synthetic-global` is
image<->caption retrieval over whole scenes.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agff_deploy.scenes import COLOURS, GLYPHS, OPPOSITE, SHAPES, ObjectGroup, Scene, make_scene, mirrored

EVAL_SEED_BASE = 950_000_000
EVAL_SEED = 7  # the seed every reported synthetic number uses; tuning happens on other seeds
MMVP_PATTERNS = (
    "orientation",
    "presence",
    "state",
    "quantity",
    "position",
    "colour",
    "shape",
    "text",
    "viewpoint",
)
# Scene attributes that are MMVP patterns under another name: training reports them by the pattern's name.
ATTRIBUTE_PATTERNS = {"direction": "orientation", "count": "quantity", "glyph": "text"}


@dataclass(frozen=True)
class ImagePair:
    pattern: str
    images: tuple[np.ndarray, np.ndarray]
    statements: tuple[str, str]


def pattern_name(attribute: str) -> str:
    """The name users see for a scene attribute, so training and evaluation print one vocabulary."""
    return ATTRIBUTE_PATTERNS.get(attribute, attribute)


def _first(scene: Scene, **changes) -> Scene:
    return dataclasses.replace(scene, groups=(dataclasses.replace(scene.groups[0], **changes),) + scene.groups[1:])


def _single(scene: Scene) -> Scene:
    return dataclasses.replace(scene, groups=scene.groups[:1])


def _other(rng: random.Random, values, current):
    return rng.choice([v for v in values if v != current])


def _orientation(scene: Scene, rng: random.Random) -> tuple[Scene, Scene]:
    a = _first(_single(scene), shape="triangle", colour="blue", direction=rng.choice(["up", "left"]), glyph=None)
    flip = {"up": "down", "left": "right"}[a.groups[0].direction]
    return a, _first(a, direction=flip)


def _presence(scene: Scene, rng: random.Random) -> tuple[Scene, Scene]:
    first = scene.groups[0]
    extra = ObjectGroup(
        shape=_other(rng, SHAPES, first.shape) if first.shape != "triangle" else "square",
        colour=rng.choice(["green", "yellow", "white"]),
        size="small",
        state="filled",
        count=1,
        position=OPPOSITE[first.position],
    )
    with_both = dataclasses.replace(scene, groups=(first, extra))
    return with_both, _single(with_both)


def _attribute(name: str, values) -> Callable[[Scene, random.Random], tuple[Scene, Scene]]:
    def make(scene: Scene, rng: random.Random) -> tuple[Scene, Scene]:
        a = _single(scene)
        return a, _first(a, **{name: _other(rng, values, getattr(a.groups[0], name))})

    return make


def _shape(scene: Scene, rng: random.Random) -> tuple[Scene, Scene]:
    plain = [s for s in SHAPES if s != "triangle"]
    a = _first(
        _single(scene), direction=None, shape=scene.groups[0].shape if scene.groups[0].shape in plain else "circle"
    )
    return a, _first(a, shape=_other(rng, plain, a.groups[0].shape))


def _text(scene: Scene, rng: random.Random) -> tuple[Scene, Scene]:
    a = _first(_single(scene), size="large", count=1, glyph=rng.choice(GLYPHS))
    return a, _first(a, glyph=_other(rng, GLYPHS, a.groups[0].glyph))


def _position(scene: Scene, rng: random.Random) -> tuple[Scene, Scene]:
    a = _single(scene)
    return a, _first(a, position=OPPOSITE[a.groups[0].position])


PAIR_MAKERS: dict[str, Callable[[Scene, random.Random], tuple[Scene, Scene]]] = {
    "orientation": _orientation,
    "presence": _presence,
    "state": _attribute("state", ("filled", "outlined")),
    "quantity": _attribute("count", (1, 2, 3)),
    "position": _position,
    "colour": _attribute("colour", tuple(COLOURS)),
    "shape": _shape,
    "text": _text,
}


def _viewpoint(seed: int, size: int) -> ImagePair:
    """A two-group left/right scene and its mirror image (pixels flipped, so the layout is exactly mirrored)."""
    rng = random.Random(seed)
    scene = make_scene(seed, held_out=True)
    first = dataclasses.replace(scene.groups[0], position=rng.choice(["left", "right"]), glyph=None)
    second = _presence(dataclasses.replace(scene, groups=(first,)), rng)[0].groups[1]
    scene = dataclasses.replace(scene, groups=(first, second))
    image = scene.render(size)
    return ImagePair("viewpoint", (image, image[:, ::-1].copy()), (scene.caption(), mirrored(scene).caption()))


def mmvp_pairs(pairs_per_pattern: int = 150, seed: int = 0, size: int = 112) -> list[ImagePair]:
    """Pairs for every pattern; each pair's two statements differ only in that pattern's words."""
    out = []
    for p, pattern in enumerate(MMVP_PATTERNS):
        for i in range(pairs_per_pattern):
            scene_seed = EVAL_SEED_BASE + seed * 1_000_000 + p * 10_000 + i
            if pattern == "viewpoint":
                out.append(_viewpoint(scene_seed, size))
                continue
            a, b = PAIR_MAKERS[pattern](make_scene(scene_seed, held_out=True), random.Random(scene_seed))
            out.append(ImagePair(pattern, (a.render(size), b.render(size)), (a.caption(), b.caption())))
    return out


def global_retrieval_set(count: int = 512, seed: int = 0, size: int = 112) -> tuple[list[np.ndarray], list[str]]:
    """Held-out scenes and their whole-scene captions, all captions distinct."""
    images, captions, seen = [], [], set()
    index = 0
    while len(images) < count:
        scene = make_scene(EVAL_SEED_BASE + 500_000 + seed * 1_000_000 + index, held_out=True)
        index += 1
        if scene.caption() in seen:
            continue
        seen.add(scene.caption())
        images.append(scene.render(size))
        captions.append(scene.caption())
    return images, captions

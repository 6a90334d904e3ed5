"""Deterministic synthetic scenes that need both global and fine-grained perception.

Shared by the trainer (built-in data), the exporter (int8 calibration) and the
evaluation, hence here in the core rather than in train/.

A scene has a global category (background and layout) and one or two object
groups, each with shape, colour, size, fill state, count, position, a triangle's
direction and an optional rendered glyph; two groups stand in a spatial
relation. Captions exist at the scene level and at full detail, with question /
answer pairs. Some (shape, colour) combinations never appear in training: the
held-out split is made only of scenes that use them, so evaluation measures
composition, not memory.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SCENES = {
    # name: (sky/wall colour, ground colour, horizon as a fraction of height)
    "beach": ((120, 190, 235), (225, 205, 150), 0.55),
    "forest": ((70, 110, 70), (40, 70, 35), 0.45),
    "night": ((20, 25, 60), (45, 45, 70), 0.7),
    "snow": ((200, 210, 225), (245, 245, 250), 0.4),
    "desert": ((235, 170, 90), (200, 140, 70), 0.6),
    "room": ((210, 195, 170), (120, 80, 50), 0.65),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (245, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 130, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SIZES = {"small": 0.13, "large": 0.26}
STATES = ("filled", "outlined")
DIRECTIONS = ("up", "down", "left", "right")
POSITIONS = ("left", "right", "top", "bottom")
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
RELATION = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}
GLYPHS = ("A", "E", "K", "X", "3", "7")
COUNT_WORDS = ("zero", "one", "two", "three")
HELD_OUT_COMBOS = frozenset(
    (SHAPES[i], colour) for i, colour in enumerate(("red", "green", "blue", "yellow", "purple"))
) | frozenset({("circle", "orange"), ("star", "white"), ("cross", "black")})


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith("ss") else "s")


@dataclass(frozen=True)
class ObjectGroup:
    shape: str
    colour: str
    size: str
    state: str
    count: int
    position: str
    direction: str | None = None
    glyph: str | None = None

    def phrase(self) -> str:
        noun = plural(self.shape) if self.count > 1 else self.shape
        words = [COUNT_WORDS[self.count], self.size, self.colour, self.state, noun]
        if self.direction:
            words.append(f"pointing {self.direction}")
        words.append(f"at the {self.position}")
        if self.glyph:
            words.append(f"marked {self.glyph}")
        return " ".join(words)


@dataclass(frozen=True)
class Scene:
    category: str
    groups: tuple[ObjectGroup, ...]
    seed: int

    def global_caption(self) -> str:
        where = " and ".join(g.position for g in self.groups)
        return f"a {self.category} scene with objects at the {where}"

    def caption(self) -> str:
        text = f"a {self.category} scene with " + " and ".join(g.phrase() for g in self.groups)
        if len(self.groups) == 2:
            a, b = self.groups
            subject = f"the {plural(a.shape)} are" if a.count > 1 else f"the {a.shape} is"
            other = plural(b.shape) if b.count > 1 else b.shape
            text += f". {subject} {RELATION[a.position]} the {other}"
        return text

    def questions(self) -> list[tuple[str, str]]:
        return [(question, answer) for _, question, answer in self.question_items()]

    def question_items(self) -> list[tuple[str, str, str]]:
        """(attribute, question, answer) about the scene and its first group; the answer is one of
        `ANSWER_OPTIONS[attribute]`."""
        first = self.groups[0]
        items = [
            ("scene", "what kind of scene is this?", self.category),
            ("colour", f"what colour is the {first.shape}?", first.colour),
            ("count", f"how many {plural(first.shape)} are there?", COUNT_WORDS[first.count]),
            ("position", f"where is the {first.shape}?", first.position),
            ("state", f"is the {first.shape} filled or outlined?", first.state),
            ("size", f"is the {first.shape} small or large?", first.size),
        ]
        if first.direction:
            items.append(("direction", f"which way does the {first.shape} point?", first.direction))
        if first.glyph:
            items.append(("glyph", f"what is written on the {first.shape}?", first.glyph))
        return items

    def render(self, size: int) -> np.ndarray:
        return render_scene(self, size)


ANSWER_OPTIONS: dict[str, tuple[str, ...]] = {
    "scene": tuple(SCENES),
    "colour": tuple(COLOURS),
    "count": COUNT_WORDS[1:],
    "position": POSITIONS,
    "state": STATES,
    "size": tuple(SIZES),
    "direction": DIRECTIONS,
    "glyph": GLYPHS,
}
ATTRIBUTES = ("scene", "shape", "colour", "size", "state", "count", "position", "direction", "glyph")


def change_attribute(scene: Scene, attribute: str, rng: random.Random) -> Scene | None:
    """The same scene with one attribute of its first group (or its category) changed, or None if n/a."""
    first = scene.groups[0]
    if attribute == "scene":
        return dataclasses.replace(scene, category=rng.choice([c for c in SCENES if c != scene.category]))
    choices = {
        "shape": [s for s in SHAPES if s not in (first.shape, "triangle") and s not in {g.shape for g in scene.groups}],
        "colour": [c for c in COLOURS if c != first.colour],
        "size": [s for s in SIZES if s != first.size],
        "state": [s for s in STATES if s != first.state],
        "count": [n for n in (1, 2, 3) if n != first.count],
        "position": [] if len(scene.groups) == 2 else [p for p in POSITIONS if p != first.position],
        "direction": [d for d in DIRECTIONS if first.direction and d != first.direction],
        "glyph": [g for g in GLYPHS if first.glyph and g != first.glyph],
    }[attribute]
    if not choices:
        return None
    changed = dataclasses.replace(first, **{attribute: rng.choice(choices)})
    if attribute == "shape":
        changed = dataclasses.replace(changed, direction=None)  # only triangles point somewhere
    return dataclasses.replace(scene, groups=(changed,) + scene.groups[1:])


def mirrored(scene: Scene) -> Scene:
    """The scene seen in a mirror: left and right swap, for positions and for where triangles point."""
    swap = {"left": "right", "right": "left"}
    groups = tuple(
        dataclasses.replace(g, position=swap.get(g.position, g.position), direction=swap.get(g.direction, g.direction))
        for g in scene.groups
    )
    return dataclasses.replace(scene, groups=groups)


def _random_group(rng: random.Random, position: str, held_out: bool, avoid_shape: str | None) -> ObjectGroup:
    while True:
        shape = rng.choice([s for s in SHAPES if s != avoid_shape])
        colour = rng.choice(list(COLOURS))
        if ((shape, colour) in HELD_OUT_COMBOS) == held_out:
            break
    size = rng.choice(list(SIZES))
    count = rng.choice((1, 2, 3)) if size == "small" else rng.choice((1, 2))
    return ObjectGroup(
        shape=shape,
        colour=colour,
        size=size,
        state=rng.choice(STATES),
        count=count,
        position=position,
        direction=rng.choice(DIRECTIONS) if shape == "triangle" else None,
        glyph=rng.choice(GLYPHS) if size == "large" and count == 1 and rng.random() < 0.5 else None,
    )


def make_scene(seed: int, held_out: bool = False) -> Scene:
    """Scene number `seed` of the train split (or of the held-out split)."""
    rng = random.Random(seed * 2 + int(held_out))
    position = rng.choice(POSITIONS)
    first = _random_group(rng, position, held_out, None)
    groups: tuple[ObjectGroup, ...] = (first,)
    if rng.random() < 0.5:
        groups += (_random_group(rng, OPPOSITE[position], False, first.shape),)
    return Scene(category=rng.choice(list(SCENES)), groups=groups, seed=seed)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _region(position: str, size: int) -> tuple[float, float, float, float]:
    half = size / 2
    return {
        "left": (0, 0, half, size),
        "right": (half, 0, size, size),
        "top": (0, 0, size, half),
        "bottom": (0, half, size, size),
    }[position]


def _shape_points(shape: str, cx: float, cy: float, r: float, direction: str | None) -> list[tuple[float, float]]:
    if shape == "triangle":
        angle = {"up": -90, "down": 90, "left": 180, "right": 0}[direction or "up"]
        return [
            (cx + r * np.cos(np.radians(angle + k * 120)), cy + r * np.sin(np.radians(angle + k * 120)))
            for k in range(3)
        ]
    if shape == "star":
        return [
            (
                cx + (r if k % 2 == 0 else r * 0.45) * np.cos(np.radians(-90 + k * 36)),
                cy + (r if k % 2 == 0 else r * 0.45) * np.sin(np.radians(-90 + k * 36)),
            )
            for k in range(10)
        ]
    w = r * 0.38
    return [
        (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx + w, cy + w),
        (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
    ]  # fmt: skip


def _draw_object(draw: ImageDraw.ImageDraw, group: ObjectGroup, cx: float, cy: float, r: float) -> None:
    colour = COLOURS[group.colour]
    fill = colour if group.state == "filled" else None
    width = max(1, int(r * 0.28))
    box = (cx - r, cy - r, cx + r, cy + r)
    if group.shape == "circle":
        draw.ellipse(box, fill=fill, outline=colour, width=width)
    elif group.shape == "square":
        inner = r * 0.85
        draw.rectangle((cx - inner, cy - inner, cx + inner, cy + inner), fill=fill, outline=colour, width=width)
    else:
        points = _shape_points(group.shape, cx, cy, r, group.direction)
        if fill:
            draw.polygon(points, fill=fill)
        else:
            draw.line(points + [points[0]], fill=colour, width=width, joint="curve")
    if group.glyph:
        ink = (0, 0, 0) if group.colour in ("white", "yellow", "orange") and fill else (255, 255, 255)
        if not fill:
            ink = colour
        draw.text((cx, cy), group.glyph, fill=ink, font=_font(int(r * 1.1)), anchor="mm")


def render_scene(scene: Scene, size: int) -> np.ndarray:
    """`[size, size, 3]` uint8 RGB."""
    rng = random.Random(scene.seed * 7919 + 17)
    sky, ground, horizon = SCENES[scene.category]
    jitter = lambda c: tuple(int(np.clip(v + rng.randint(-12, 12), 0, 255)) for v in c)  # noqa: E731
    image = Image.new("RGB", (size, size), jitter(sky))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, int(size * horizon), size, size), fill=jitter(ground))
    for group in scene.groups:
        x0, y0, x1, y1 = _region(group.position, size)
        r = SIZES[group.size] * size / 2
        slots = _slots(group.count, x0, y0, x1, y1, r)
        for cx, cy in slots:
            _draw_object(draw, group, cx + rng.uniform(-1.5, 1.5), cy + rng.uniform(-1.5, 1.5), r)
    return np.asarray(image, dtype=np.uint8)


def _slots(count: int, x0: float, y0: float, x1: float, y1: float, r: float) -> list[tuple[float, float]]:
    """Non-overlapping centres for `count` objects inside a region."""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if count == 1:
        return [(cx, cy)]
    wide = (x1 - x0) >= (y1 - y0)
    step = min(max(x1 - x0, y1 - y0) / (count + 0.5), 2.3 * r)
    offsets = [(i - (count - 1) / 2) * step for i in range(count)]
    return [(cx + o, cy) if wide else (cx, cy + o) for o in offsets]


def vocabulary_corpus() -> list[str]:
    """Every word the generator can emit, in sentences: the demo tokenizer's training text."""
    texts = [make_scene(s, held_out=h).caption() for s in range(400) for h in (False, True)]
    texts += [make_scene(s).global_caption() for s in range(50)]
    texts += [q + " " + a for s in range(200) for q, a in make_scene(s).questions()]
    texts += [" ".join(SCENES), " ".join(SHAPES), " ".join(COLOURS), " ".join(GLYPHS), " ".join(COUNT_WORDS)]
    return texts

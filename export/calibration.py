"""Real inputs for int8 calibration: the built-in scenes by default, or the user's own folder.

A folder for `--calib-dir` holds images (any format Pillow reads) and,
optionally, `texts.txt` with one text per line for text items; without it the
language encoder calibrates its text items on built-in captions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from agff_deploy.contract import VISION_ENCODER, Feed, GraphSpec
from agff_deploy.errors import InputError, MissingFileError
from agff_deploy.feeds import language_feed, vision_feed
from agff_deploy.images import IMAGE_SUFFIXES, ImageLoadError, open_image
from agff_deploy.inputs import ItemEncoder
from agff_deploy.scenes import make_scene

CALIBRATION_SEED = 500_000_000
QUESTIONS = ("", "what colour is the object?", "how many objects are there?", "")


def _folder_images(folder: Path) -> list[Image.Image]:
    """The folder's images decoded as the runtime decodes them: int8 scales fit the pixels it will see."""
    if not folder.is_dir():
        raise MissingFileError(f"--calib-dir {folder} is not a folder")
    images = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            images.append(open_image(path)[0])
        except ImageLoadError as err:
            print(f"skipped for calibration: {err}")
    if not images:
        raise InputError(f"--calib-dir {folder} holds no readable images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def calibration_feeds(
    encoder: ItemEncoder,
    graph: GraphSpec,
    calib_dir: str | Path | None = None,
    samples: int = 128,
    vision_graph: Path | None = None,
    batch_size: int = 8,
) -> list[dict[str, np.ndarray]]:
    """Feed dicts for one stored encoder graph (its contract resolved for the model); `samples` scenes unless
    `calib_dir`.

    The vision encoder calibrates on images. The language encoder calibrates on what it serves: text items, and
    image items whose features `vision_graph` (the fp32 vision encoder, run in ONNX Runtime) computes.
    """
    scenes = [make_scene(CALIBRATION_SEED + i) for i in range(samples)]
    images = _folder_images(Path(calib_dir)) if calib_dir else encoder.render(scenes, mixed_aspects=True)
    prompts = [QUESTIONS[i % len(QUESTIONS)] for i in range(len(images))]
    image_feeds = [
        encoder.feeds(prompts[i : i + batch_size], images[i : i + batch_size])
        for i in range(0, len(images), batch_size)
    ]
    if graph.name == VISION_ENCODER.name:
        return [vision_feed(feed) for feed in image_feeds]
    texts_file = Path(calib_dir) / "texts.txt" if calib_dir else None
    if texts_file and texts_file.is_file():
        texts = [t for t in texts_file.read_text().splitlines() if t.strip()]
    else:
        texts = [s.caption() for s in scenes]
    text_feeds = [encoder.feeds(texts[i : i + batch_size], None) for i in range(0, len(texts), batch_size)]
    if vision_graph is None:
        raise ValueError("the language encoder calibrates on image features: pass the fp32 vision graph")
    return [language_feed(feed, graph) for feed in text_feeds] + _with_features(image_feeds, vision_graph, graph)


def _with_features(image_feeds: list[Feed], vision_graph: Path, language: GraphSpec) -> list[Feed]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(vision_graph), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    feeds = [
        language_feed(feed, language, dict(zip(names, session.run(None, vision_feed(feed)), strict=True)))
        for feed in image_feeds
    ]
    del session
    return feeds

"""Texts and images -> the exported graphs' numpy feeds, named by the graph contract.

No torch: the runtime's Embedder, the parity gate (also on a Jetson, for
TensorRT engines) and the exporter's PyTorch inputs (`agff_deploy.inputs`)
all build their feeds here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
from PIL import Image

from .contract import (
    ATTENTION_MASK,
    IMAGE_GRID,
    INPUT_IDS,
    PIXEL_VALUES,
    VISION_ENCODER,
    Feed,
    GraphSpec,
    TensorSpec,
)
from .manifest import ImageFormat
from .patches import PatchBatch, patch_batch
from .preprocessing import ImagePreprocessor, NativePreprocessor
from .scenes import Scene
from .tokenization import ChatFormatter

ImageLike = np.ndarray | Image.Image
_EncoderT = TypeVar("_EncoderT", bound="FeedEncoder")


class FeedEncoder:
    def __init__(
        self,
        formatter: ChatFormatter,
        preprocessor: ImagePreprocessor | NativePreprocessor,
        patch_size: int,
        merge_size: int,
        scene_size: int,
    ) -> None:
        self.formatter = formatter
        self.preprocessor = preprocessor
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.scene_size = scene_size  # the side the built-in scenes are drawn at for this model

    @classmethod
    def for_images(cls: type[_EncoderT], formatter: ChatFormatter, image: ImageFormat) -> _EncoderT:
        """The encoder of a model whose images are `image` (a config's `image_format()` or a manifest's)."""
        return cls(formatter, image.preprocessor(), image.patch_size, image.merge_size, image.size[0])

    def render(self, scenes: Sequence[Scene], mixed_aspects: bool = False) -> list[np.ndarray]:
        """Built-in scenes as images for this model. At native resolution `mixed_aspects` cuts them to a square, a
        wide and a tall image in turn, so a batch of them holds several sizes, as real photos do."""
        images = [scene.render(self.scene_size) for scene in scenes]
        if not (mixed_aspects and isinstance(self.preprocessor, NativePreprocessor)):
            return images
        half = self.scene_size // 2
        cuts = (np.s_[:, :], np.s_[:half, :], np.s_[:, :half])
        return [np.ascontiguousarray(image[cuts[i % len(cuts)]]) for i, image in enumerate(images)]

    def pixels(self, images: Sequence[ImageLike]) -> PatchBatch:
        """The images as the vision encoder's padded patch rows; arrays already at their size skip the resize."""
        pre = self.preprocessor
        arrays = [im if isinstance(im, np.ndarray) and pre.is_resized(im) else pre.resize(_as_pil(im)) for im in images]
        return self.patches([self.preprocessor.normalize(a) for a in arrays])

    def patches(self, normalized: Sequence[np.ndarray]) -> PatchBatch:
        """Normalised `[3, H, W]` images -> the vision encoder's padded patch rows and grids."""
        return patch_batch(normalized, self.patch_size, self.merge_size)

    def image_feed(
        self,
        pixels: PatchBatch,
        instructions: Sequence[str],
        names: Sequence[str] | None = None,
        tasks: Sequence[str | None] | None = None,
    ) -> Feed:
        """Preprocessed images and one instruction each (and, for a single-vector embedder, a task instruction
        each: None for the default); `names` label instructions in truncation warnings."""
        tokens = self.formatter.encode(
            instructions, with_image=True, names=names, image_tokens=pixels.image_tokens(self.merge_size), tasks=tasks
        )
        return {
            PIXEL_VALUES.name: np.ascontiguousarray(pixels.pixel_values, dtype=np.float32),
            IMAGE_GRID.name: pixels.image_grid,
            INPUT_IDS.name: tokens.input_ids,
            ATTENTION_MASK.name: tokens.attention_mask,
        }

    def text_feed(
        self, texts: Sequence[str], names: Sequence[str] | None = None, tasks: Sequence[str | None] | None = None
    ) -> Feed:
        tokens = self.formatter.encode(texts, with_image=False, names=names, tasks=tasks)
        return {INPUT_IDS.name: tokens.input_ids, ATTENTION_MASK.name: tokens.attention_mask}

    def feeds(self, texts: Sequence[str], images: Sequence[ImageLike] | None = None) -> Feed:
        """The image encoder's feed when `images` are given (texts are their instructions), else the text encoder's."""
        return self.text_feed(texts) if images is None else self.image_feed(self.pixels(images), texts)


def vision_feed(feed: Feed) -> Feed:
    """The vision encoder's feed for an image pipeline's feed: its patches and their grids."""
    return {name: feed[name] for name in VISION_ENCODER.input_names}


def language_feed(feed: Feed, language: GraphSpec, vision: Mapping[str, np.ndarray] | None = None) -> Feed:
    """The language encoder's feed (`language`: its contract resolved for the model) for an item pipeline's feed:
    its tokens, and the vision encoder's outputs and grids for its images.

    A text batch gets a placeholder for each vision output (one zero image token per item, and per DeepStack tap)
    and a one-block grid: the graph's inputs are never empty, and no `<|image_pad|>` id reads them.
    """
    batch = feed[INPUT_IDS.name].shape[0]
    grid = feed.get(IMAGE_GRID.name)
    given = {
        INPUT_IDS.name: feed[INPUT_IDS.name],
        ATTENTION_MASK.name: feed[ATTENTION_MASK.name],
        IMAGE_GRID.name: np.full((batch, 2), TEXT_GRID, np.int64) if grid is None else grid,
    }
    out = {}
    for tensor in language.inputs:
        if tensor.name in given:
            out[tensor.name] = given[tensor.name]
        else:
            value = _placeholder(tensor, batch) if vision is None else vision[tensor.name]
            out[tensor.name] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def _placeholder(tensor: TensorSpec, batch: int) -> np.ndarray:
    return np.zeros(tensor.resolve({"batch": batch, "image_tokens": 1}).shape, np.float32)


# The placeholder patch grid of a text item, two patches a side (a whole merge block at Qwen2-VL's merge of 2): the
# graph divides by the image's size in tokens, which must not be 0 even where no token reads it.
TEXT_GRID = 2


def _as_pil(image: ImageLike) -> Image.Image:
    return Image.fromarray(image) if isinstance(image, np.ndarray) else image

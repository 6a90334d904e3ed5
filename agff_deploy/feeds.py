"""Texts and images -> the exported graphs' numpy feeds, named by the graph contract.

No torch: the runtime's Embedder, the parity gate (also on a Jetson, for
TensorRT engines) and the exporter's PyTorch inputs (`agff_deploy.inputs`)
all build their feeds here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from .contract import ATTENTION_MASK, IMAGE_FEATURES, INPUT_IDS, PIXEL_VALUES, Feed
from .preprocessing import ImagePreprocessor
from .tokenization import ChatFormatter

ImageLike = np.ndarray | Image.Image


class FeedEncoder:
    def __init__(self, formatter: ChatFormatter, preprocessor: ImagePreprocessor) -> None:
        self.formatter = formatter
        self.preprocessor = preprocessor

    def pixels(self, images: Sequence[ImageLike]) -> np.ndarray:
        """`[N, 3, H, W]` float32; arrays already at the model's size skip the resize."""
        size = (self.preprocessor.height, self.preprocessor.width, 3)
        arrays = [
            im if isinstance(im, np.ndarray) and im.shape == size else self.preprocessor.resize(_as_pil(im))
            for im in images
        ]
        return self.preprocessor.normalize(np.stack(arrays))

    def image_feed(self, pixels: np.ndarray, instructions: Sequence[str], names: Sequence[str] | None = None) -> Feed:
        """Preprocessed pixels and one instruction each; `names` label instructions in truncation warnings."""
        tokens = self.formatter.encode(instructions, with_image=True, names=names)
        return {
            PIXEL_VALUES.name: np.ascontiguousarray(pixels, dtype=np.float32),
            INPUT_IDS.name: tokens.input_ids,
            ATTENTION_MASK.name: tokens.attention_mask,
        }

    def text_feed(self, texts: Sequence[str], names: Sequence[str] | None = None) -> Feed:
        tokens = self.formatter.encode(texts, with_image=False, names=names)
        return {INPUT_IDS.name: tokens.input_ids, ATTENTION_MASK.name: tokens.attention_mask}

    def feeds(self, texts: Sequence[str], images: Sequence[ImageLike] | None = None) -> Feed:
        """The image encoder's feed when `images` are given (texts are their instructions), else the text encoder's."""
        return self.text_feed(texts) if images is None else self.image_feed(self.pixels(images), texts)


def language_feed(feed: Feed, image_features: np.ndarray | None = None, hidden: int | None = None) -> Feed:
    """The language encoder's feed for an item pipeline's feed: its tokens and the image features of its images.

    A text batch gets one zero feature per item (`hidden` wide): the graph's input is never empty, and no
    `<|image_pad|>` id reads it.
    """
    if image_features is None:
        if hidden is None:
            raise ValueError("a text feed's placeholder image feature needs the hidden size")
        image_features = np.zeros((feed[INPUT_IDS.name].shape[0], 1, hidden), np.float32)
    return {
        INPUT_IDS.name: feed[INPUT_IDS.name],
        ATTENTION_MASK.name: feed[ATTENTION_MASK.name],
        IMAGE_FEATURES.name: np.ascontiguousarray(image_features, dtype=np.float32),
    }


def _as_pil(image: ImageLike) -> Image.Image:
    return Image.fromarray(image) if isinstance(image, np.ndarray) else image

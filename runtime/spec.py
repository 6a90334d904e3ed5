"""What the runtime needs to know about a model, read from a bundle manifest or a checkpoint config.

Preprocessing, tokenisation and scoring are built from this alone; the
runners below never see it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agff_deploy.feeds import FeedEncoder
from agff_deploy.manifest import Manifest
from agff_deploy.preprocessing import ImagePreprocessor
from agff_deploy.tokenization import ChatFormatter


@dataclass(frozen=True)
class ModelSpec:
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_image_tokens: int
    max_text_tokens: int
    tokenizer_file: Path
    t_in: float
    t_f: float
    pattern_bias: tuple[float, ...]
    temperature: float
    batch_size: int

    @classmethod
    def from_manifest(cls, folder: Path, manifest: Manifest) -> ModelSpec:
        image, fusion = manifest.image, manifest.fusion
        return cls(
            image_size=image.size,
            mean=image.mean,
            std=image.std,
            num_image_tokens=image.num_image_tokens,
            max_text_tokens=manifest.tokenizer.max_text_tokens,
            tokenizer_file=folder / manifest.tokenizer.file,
            t_in=fusion.t_in,
            t_f=fusion.t_f,
            pattern_bias=fusion.pattern_bias,
            temperature=fusion.temperature,
            batch_size=manifest.dims.batch.opt,
        )

    @classmethod
    def from_checkpoint(
        cls, folder: Path, fusion: dict[str, Any], image_size: tuple[int, int] | None = None
    ) -> ModelSpec:
        """From agff_config.json plus the fusion values the loaded weights hold."""
        from agff_deploy.preprocessing import CLIP_MEAN, CLIP_STD

        config = json.loads((folder / "agff_config.json").read_text())
        height, width = image_size or config["image_size"]
        step = config["base"]["vision_config"]["patch_size"] * config["base"]["vision_config"]["spatial_merge_size"]
        return cls(
            image_size=(height, width),
            mean=CLIP_MEAN,
            std=CLIP_STD,
            num_image_tokens=(height // step) * (width // step),
            max_text_tokens=config["max_text_tokens"],
            tokenizer_file=folder / "tokenizer.json",
            batch_size=8,
            **fusion,
        )

    def preprocessor(self) -> ImagePreprocessor:
        return ImagePreprocessor(*self.image_size, mean=self.mean, std=self.std)

    def formatter(self) -> ChatFormatter:
        return ChatFormatter.from_file(self.tokenizer_file, self.num_image_tokens, self.max_text_tokens)

    def feed_encoder(self) -> FeedEncoder:
        return FeedEncoder(self.formatter(), self.preprocessor())

    @property
    def bias(self) -> np.ndarray:
        return np.asarray(self.pattern_bias, np.float32)

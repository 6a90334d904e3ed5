"""What the runtime needs to know about a model, read from a bundle manifest or a checkpoint config.

Preprocessing, tokenisation and scoring are built from this alone; the
runners below never see it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agff_deploy.config import AGFFConfig
from agff_deploy.feeds import FeedEncoder
from agff_deploy.manifest import ImageFormat, Manifest
from agff_deploy.tokenization import ChatFormatter, TaskSlot


@dataclass(frozen=True)
class ModelSpec:
    image: ImageFormat
    max_text_tokens: int
    chat_head: str
    chat_tail: str
    empty_text: str
    task: TaskSlot | None
    tokenizer_file: Path
    t_in: float
    t_f: float
    pattern_bias: tuple[float, ...]
    temperature: float
    batch_size: int
    matryoshka: bool = False  # the leading dimensions of an embedding are an embedding (a server may cut them)

    @classmethod
    def from_manifest(cls, folder: Path, manifest: Manifest) -> ModelSpec:
        fusion = manifest.fusion
        return cls(
            image=manifest.image,
            max_text_tokens=manifest.tokenizer.max_text_tokens,
            chat_head=manifest.tokenizer.chat_head,
            chat_tail=manifest.tokenizer.chat_tail,
            empty_text=manifest.tokenizer.empty_text,
            task=manifest.tokenizer.task,
            tokenizer_file=folder / manifest.tokenizer.file,
            t_in=fusion.t_in,
            t_f=fusion.t_f,
            pattern_bias=fusion.pattern_bias,
            temperature=fusion.temperature,
            batch_size=manifest.dims.batch.opt,
            matryoshka=manifest.model.matryoshka,
        )

    @classmethod
    def from_checkpoint(
        cls, folder: Path, fusion: dict[str, Any], image_size: tuple[int, int] | None = None
    ) -> ModelSpec:
        """From agff_config.json (optionally at another fixed size) plus the fusion values the loaded weights hold."""
        config = AGFFConfig.load(folder)
        if image_size is not None:
            config = dataclasses.replace(config, image_size=tuple(image_size), image_resize="fixed")
        return cls(
            image=config.image_format(),
            max_text_tokens=config.max_text_tokens,
            chat_head=config.chat_head,
            chat_tail=config.chat_tail,
            empty_text=config.empty_text,
            task=config.task_slot,
            tokenizer_file=folder / "tokenizer.json",
            batch_size=8,
            matryoshka=config.matryoshka,
            **fusion,
        )

    def formatter(self) -> ChatFormatter:
        return ChatFormatter.from_file(
            self.tokenizer_file,
            self.image.num_image_tokens,
            self.max_text_tokens,
            self.chat_head,
            self.chat_tail,
            self.empty_text,
            self.task,
        )

    def feed_encoder(self) -> FeedEncoder:
        return FeedEncoder.for_images(self.formatter(), self.image)

    @property
    def bias(self) -> np.ndarray:
        return np.asarray(self.pattern_bias, np.float32)

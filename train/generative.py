"""Generative pretraining: next-token prediction of what a built-in scene shows, before any contrastive step.

AGFF's fine-grained prompts are meant to read different aspects out of a backbone that already
understands images and language. `python -m train.run --objective lm` gives the toy model that
understanding: captions of a scene and answers to questions about it (colour, shape, count,
position, orientation, text, state), each conditioned on the image, generated as the assistant turn
after exactly the user turn the embedder reads. The run writes an ordinary Qwen2-VL base folder;
`python -m train.run --base FOLDER` then fine-tunes the embedder from it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agff_deploy.feeds import FeedEncoder
from agff_deploy.model import AGFFEmbedder
from agff_deploy.scenes import make_scene

from .distributed import Replica

IGNORED = -100  # label of a token whose prediction is not trained (the user turn, padding)
ANSWER_END = "<|im_end|>"
CAPTION_SHARE = 0.5  # the rest of the examples are question/answer pairs


@dataclass(frozen=True)
class Example:
    """An image, a question about it ("" asks for the caption) and the answer the model learns to write."""

    question: str
    image: np.ndarray
    answer: str


class SceneExamples:
    """Fresh built-in scenes every step, half captioned and half asked about, by (seed, step) alone."""

    def __init__(self, seed: int, batch_size: int, image_size: int) -> None:
        self.seed = seed
        self.batch_size = batch_size
        self.image_size = image_size

    def batch(self, step: int) -> list[Example]:
        rng = random.Random(self.seed * 1_000_003 + step)
        first = (self.seed * 100_000 + step) * self.batch_size
        examples = []
        for j in range(self.batch_size):
            scene = make_scene(first + j)
            image = scene.render(self.image_size)
            if rng.random() < CAPTION_SHARE:
                examples.append(Example("", image, scene.caption()))
            else:
                _, question, answer = rng.choice(scene.question_items())
                examples.append(Example(question, image, answer))
        return examples


@dataclass
class TokenBatch:
    """Right-padded user turn + answer tokens, with labels only on the answer (and its end token)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    image_grid: torch.Tensor

    def to(self, device: torch.device) -> TokenBatch:
        return TokenBatch(*(t.to(device) for t in dataclasses.astuple(self)))


def encode_examples(encoder: FeedEncoder, examples: Sequence[Example]) -> TokenBatch:
    formatter = encoder.formatter
    end = formatter.tokenizer.token_to_id(ANSWER_END)
    pixels = encoder.pixels([e.image for e in examples])
    rows, labels = [], []
    for example, image_tokens in zip(examples, pixels.image_tokens(encoder.merge_size), strict=True):
        prompt, _ = formatter.item_ids(example.question, image_tokens)
        answer = formatter.tokenizer.encode(example.answer, add_special_tokens=False).ids + [end]
        rows.append(prompt + answer)
        labels.append([IGNORED] * len(prompt) + answer)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), formatter.pad_id, dtype=torch.int64)
    label_ids = torch.full((len(rows), length), IGNORED, dtype=torch.int64)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.int64)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        label_ids[i, : len(row)] = torch.tensor(label)
        attention_mask[i, : len(row)] = 1
    grid = torch.from_numpy(pixels.image_grid)
    return TokenBatch(input_ids, attention_mask, label_ids, torch.from_numpy(pixels.pixel_values), grid)


def answer_log_probs(model: AGFFEmbedder, batch: TokenBatch) -> torch.Tensor:
    """`[B, L-1]` log-probability of each next token under the model, 0 where the label is ignored.

    The output layer is the input embedding (tied), so the base folder holds no extra matrix.
    """
    hidden = model.token_states(batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_grid)
    logits = hidden[:, :-1].float() @ model.mllm.language_model.embed_tokens.weight.float().T
    targets = batch.labels[:, 1:]
    picked = torch.gather(F.log_softmax(logits, dim=-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(targets == IGNORED, torch.zeros_like(picked), picked)


class GenerativeStep(nn.Module):
    """What a pretraining step differentiates (the module DDP wraps): mean next-token loss over answer tokens."""

    def __init__(self, model: AGFFEmbedder, encoder: FeedEncoder, replica: Replica, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.encoder = encoder
        self.replica = replica
        self.device = device

    def prepare(self, batch: Sequence[Example]) -> TokenBatch:
        examples, _ = self.replica.shard(batch)
        return encode_examples(self.encoder, examples).to(self.device)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            log_probs = answer_log_probs(self.model, batch)
        return -log_probs.sum() / (batch.labels[:, 1:] != IGNORED).sum()

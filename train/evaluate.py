"""Held-out checks printed at the end of training.

R@1 of image->caption retrieval among held-out scenes (attribute combinations
never trained on), and per-attribute pair accuracy: for a held-out image, does
its true caption outscore the same caption with one attribute changed?
Attributes are reported under the benchmark's pattern names (orientation,
quantity, text), so training and `python -m agff_deploy.eval` agree.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from agff_deploy.eval.synthetic import pattern_name
from agff_deploy.inputs import ItemEncoder
from agff_deploy.model import AGFFEmbedder
from agff_deploy.scenes import ATTRIBUTES, change_attribute, make_scene

EVAL_SEED_OFFSET = 900_000_000
NAME_WIDTH = max(len(pattern_name(a)) for a in ATTRIBUTES)  # one column for every run, whichever names it reports


@torch.no_grad()
def embed(
    model: AGFFEmbedder,
    encoder: ItemEncoder,
    texts: Sequence[str],
    images: Sequence[np.ndarray] | None = None,
    chunk: int = 64,
) -> torch.Tensor:
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(texts), chunk):
        part_images = None if images is None else images[start : start + chunk]
        inputs = encoder.inputs(texts[start : start + chunk], part_images).to(device)
        parts.append(model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.image_grid).float())
    return torch.cat(parts)


@dataclass
class HeldOutReport:
    recall_at_1: float
    attribute_accuracy: dict[str, float]
    num_pairs: int

    def lines(self) -> list[str]:
        rows = [f"held-out image->caption R@1 among {self.num_pairs}: {self.recall_at_1:.3f}"]
        rows += [f"  {name:<{NAME_WIDTH}} pair accuracy {acc:.3f}" for name, acc in self.attribute_accuracy.items()]
        return rows


@torch.no_grad()
def evaluate_held_out(model: AGFFEmbedder, encoder: ItemEncoder, num_pairs: int = 256, seed: int = 0) -> HeldOutReport:
    was_training = model.training
    model.eval()
    size = model.config.image_size[0]
    scenes = [make_scene(EVAL_SEED_OFFSET + seed * 10_000 + i, held_out=True) for i in range(num_pairs)]
    images = [s.render(size) for s in scenes]
    image_emb = embed(model, encoder, [""] * num_pairs, images)
    caption_emb = embed(model, encoder, [s.caption() for s in scenes])
    scores = model.similarity(image_emb, caption_emb)
    recall = (scores.argmax(dim=1).cpu() == torch.arange(num_pairs)).float().mean().item()
    rng = random.Random(seed)
    accuracy = {}
    for attribute in ATTRIBUTES:
        rows = [(i, change_attribute(s, attribute, rng)) for i, s in enumerate(scenes)]
        rows = [(i, changed) for i, changed in rows if changed is not None]
        if not rows:
            continue
        index = torch.tensor([i for i, _ in rows], device=scores.device)
        wrong = embed(model, encoder, [changed.caption() for _, changed in rows])
        true_score = scores[index, index]
        wrong_score = model.similarity(image_emb[index], wrong).diagonal()
        accuracy[pattern_name(attribute)] = (true_score > wrong_score).float().mean().item()
    model.train(was_training)
    return HeldOutReport(recall, accuracy, num_pairs)

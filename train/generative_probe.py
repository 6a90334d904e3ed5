"""Held-out check of a generatively pretrained base: can it answer what the benchmark asks about?

Every question `Scene.question_items` asks about a held-out scene (shape/colour combinations never
trained on) is answered by the option the model finds most likely, the summed log-probability of
the option's tokens. Chance is one over the number of options. An attribute the base cannot answer
is one its image tokens do not carry, whatever readout is trained on top of it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from agff_deploy.eval.synthetic import pattern_name
from agff_deploy.feeds import FeedEncoder
from agff_deploy.model import AGFFEmbedder
from agff_deploy.scenes import ANSWER_OPTIONS, make_scene

from .generative import Example, answer_log_probs, encode_examples

PROBE_SEED_OFFSET = 910_000_000
CHUNK = 128


@dataclass
class AnswerReport:
    accuracy: dict[str, float]
    chance: dict[str, float]
    questions: dict[str, int]

    def lines(self) -> list[str]:
        width = max(len(name) for name in self.accuracy)
        rows = [f"held-out question answering ({sum(self.questions.values())} questions), accuracy vs chance:"]
        for name, accuracy in self.accuracy.items():
            rows.append(
                f"  {name:<{width}} {accuracy:.3f}  (chance {self.chance[name]:.3f}, {self.questions[name]} asked)"
            )
        return rows


@torch.no_grad()
def probe_answers(model: AGFFEmbedder, encoder: FeedEncoder, num_scenes: int = 200, seed: int = 0) -> AnswerReport:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    size = model.config.image_size[0]
    examples: list[Example] = []
    questions: list[tuple[str, int, int]] = []  # (attribute, first option's row, index of the right answer)
    for i in range(num_scenes):
        scene = make_scene(PROBE_SEED_OFFSET + seed * 1_000_000 + i, held_out=True)
        image = scene.render(size)
        for attribute, question, answer in scene.question_items():
            options = ANSWER_OPTIONS[attribute]
            questions.append((attribute, len(examples), options.index(answer)))
            examples += [Example(question, image, option) for option in options]
    scores = torch.cat(
        [
            answer_log_probs(model, encode_examples(encoder, examples[i : i + CHUNK]).to(device)).sum(dim=1).cpu()
            for i in range(0, len(examples), CHUNK)
        ]
    )
    right: dict[str, list[bool]] = defaultdict(list)
    for attribute, start, answer in questions:
        options = len(ANSWER_OPTIONS[attribute])
        right[attribute].append(int(scores[start : start + options].argmax()) == answer)
    model.train(was_training)
    return AnswerReport(
        accuracy={pattern_name(a): sum(r) / len(r) for a, r in right.items()},
        chance={pattern_name(a): 1 / len(ANSWER_OPTIONS[a]) for a in right},
        questions={pattern_name(a): len(r) for a, r in right.items()},
    )

"""Tokenizer and chat formatting, with the `tokenizers` library only (no torch).

The runtime on a Jetson has `tokenizers` but not transformers, so formatting
lives here once and is shared by training, export checks and the runtime.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .errors import ArtifactError, InputError, MissingFileError

TOKENIZER_FILE = "tokenizer.json"

# Qwen2-VL's special and chat tokens, in its order, so local tokenizers take
# the same code path as a real checkpoint's.
QWEN2VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
USER_HEAD, USER_TAIL = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"


def train_bpe_tokenizer(corpus: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `corpus`, with Qwen2-VL's special tokens after the vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_special_tokens(list(QWEN2VL_SPECIAL_TOKENS))
    return tokenizer


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Qwen2-VL config ids (`image_token_id`, ...) as this tokenizer assigns them."""
    ids = {}
    for key, token in (
        ("image_token_id", IMAGE_PAD),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", VISION_START),
        ("vision_end_token_id", VISION_END),
        ("bos_token_id", "<|endoftext|>"),
        ("eos_token_id", "<|im_end|>"),
        ("pad_token_id", "<|endoftext|>"),
    ):
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise ArtifactError(f"tokenizer has no {token} token; Qwen2-VL checkpoints need it")
        ids[key] = token_id
    return ids


def punctuated(text: str) -> str:
    """`text` stripped, with a full stop added unless it ends in punctuation (Qwen3-VL-Embedding's instructions)."""
    text = text.strip()
    return text if not text or unicodedata.category(text[-1]).startswith("P") else text + "."


@dataclass(frozen=True)
class TaskSlot:
    """Where a single-vector embedder's task instruction sits in its chat turn: the head is `prefix` + task +
    `suffix` (the system turn, then the user turn's opening), `default` when a call gives none. Retrieval embeds
    queries with a task ("Retrieve images that match the given text.") and documents with the default; `punctuate`
    adds a full stop to a task that ends without punctuation, as Qwen3-VL-Embedding's script does."""

    prefix: str
    suffix: str
    default: str
    punctuate: bool = False

    def head(self, task: str | None = None) -> str:
        text = self.default if task is None else task
        return self.prefix + (punctuated(text) if self.punctuate else text) + self.suffix

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


NO_TASK = (
    "this model takes no task instruction: only a single-vector export (GME, Qwen3-VL-Embedding) has one, in its "
    "system turn; an AGFF model's instruction is text in the user turn, given with each image (`instructions=`, "
    "agff-run --instruction)"
)


@dataclass
class EncodedBatch:
    """Right-padded token ids and their mask, as numpy int64 `[B, L]`."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: list[int]


class ChatFormatter:
    """Formats an item as the model's chat turn and tokenizes it: `head`, the item, `tail`.

    `head` and `tail` are the model's chat template rendered around one user turn (`chat_format`): by default
    Qwen2-VL's user turn and the assistant's opening. An image is `<|vision_start|>` + T x `<|image_pad|>` +
    `<|vision_end|>`, placed where its text holds `IMAGE_PLACEHOLDER`, else before the text (Qwen2-VL's and
    Qwen3-VL's convention); a text-only item with no text is `empty_text` (Qwen3-VL-Embedding's "NULL"). The
    runtime, trainer and exporter all go through here.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        num_image_tokens: int,
        max_text_tokens: int,
        head: str = USER_HEAD,
        tail: str = USER_TAIL,
        empty_text: str = "",
        task: TaskSlot | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.max_text_tokens = max_text_tokens
        self.empty_text = empty_text
        self.task = task
        self._task_heads: dict[str, list[int]] = {}
        self.pad_id = tokenizer.token_to_id("<|endoftext|>")
        self.image_id = tokenizer.token_to_id(IMAGE_PAD)
        self._head = self._ids(head)
        self._tail = self._ids(tail)
        self._vision_start = tokenizer.token_to_id(VISION_START)
        self._vision_end = tokenizer.token_to_id(VISION_END)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        num_image_tokens: int,
        max_text_tokens: int,
        head: str = USER_HEAD,
        tail: str = USER_TAIL,
        empty_text: str = "",
        task: TaskSlot | None = None,
    ) -> ChatFormatter:
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"tokenizer file {path} not found")
        return cls(Tokenizer.from_file(str(path)), num_image_tokens, max_text_tokens, head, tail, empty_text, task)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def text_ids(self, text: str) -> list[int]:
        """The ids of an item's text, before the `max_text_tokens` budget is applied."""
        return self._ids(text.replace(IMAGE_PLACEHOLDER, "").strip())

    def image_ids(self, image_tokens: int) -> list[int]:
        """An image's block: `<|vision_start|>`, one `<|image_pad|>` per image token, `<|vision_end|>`."""
        return [self._vision_start, *[self.image_id] * image_tokens, self._vision_end]

    def head_ids(self, task: str | None = None) -> list[int]:
        """The ids of the chat turn's head with `task` as its task instruction (None: the model's default).

        A task longer than `max_text_tokens` is cut to that many tokens, with one warning per task.
        """
        if task is None:
            return self._head
        if self.task is None:
            raise InputError(NO_TASK)
        if task not in self._task_heads:
            self._task_heads[task] = self._ids(self.task.head(self._within_budget(task)))
        return self._task_heads[task]

    def _within_budget(self, task: str) -> str:
        ids = self._ids(task.strip())
        if len(ids) <= self.max_text_tokens:
            return task
        warnings.warn(f"task {task[:40]!r}: longer than {self.max_text_tokens} tokens, truncated", stacklevel=4)
        return self.tokenizer.decode(ids[: self.max_text_tokens])

    def item_ids(self, text: str, image_tokens: int | None, task: str | None = None) -> tuple[list[int], bool]:
        """Token ids of one item (with an image of `image_tokens` tokens, or none; under `task`, see `head_ids`) and
        whether its text was cut.

        A text that places its image (`IMAGE_PLACEHOLDER`) is kept as written around it; the budget counts the
        text on both sides, and a cut keeps the start.
        """
        if image_tokens is not None and IMAGE_PLACEHOLDER in text:
            before, _, after = text.partition(IMAGE_PLACEHOLDER)
            before_ids, after_ids = self._ids(before), self._ids(after.replace(IMAGE_PLACEHOLDER, ""))
        else:
            before_ids, after_ids = [], self.text_ids(text)
        if image_tokens is None and not before_ids and not after_ids:
            after_ids = self.text_ids(self.empty_text)
        truncated = len(before_ids) + len(after_ids) > self.max_text_tokens
        before_ids = before_ids[: self.max_text_tokens]
        after_ids = after_ids[: self.max_text_tokens - len(before_ids)]
        image_ids = [] if image_tokens is None else self.image_ids(image_tokens)
        return self.head_ids(task) + before_ids + image_ids + after_ids + self._tail, truncated

    def length_range(self, with_image: bool) -> tuple[int, int]:
        """Shortest (empty text) and longest (full text budget, and a task of the full budget where the model takes
        one) item, in tokens; an image counts at its most tokens."""
        fixed = len(self._head) + len(self._tail) + (len(self.image_ids(self.num_image_tokens)) if with_image else 0)
        task = self.max_text_tokens if self.task else 0
        return fixed, fixed + self.max_text_tokens + task

    def encode(
        self,
        texts: Sequence[str],
        with_image: bool,
        names: Sequence[str] | None = None,
        image_tokens: Sequence[int] | None = None,
        tasks: Sequence[str | None] | None = None,
    ) -> EncodedBatch:
        """Tokenize a batch; a text over the budget is truncated with a warning naming it (`names[i]`).

        With images, `image_tokens[i]` is item i's image size in tokens (the model's fixed count by default).
        `tasks[i]` is item i's task instruction (None: the default).
        """
        if with_image and image_tokens is None:
            image_tokens = [self.num_image_tokens] * len(texts)
        rows, truncated = [], []
        for i, text in enumerate(texts):
            ids, cut = self.item_ids(text, image_tokens[i] if with_image else None, tasks[i] if tasks else None)
            rows.append(ids)
            if cut:
                truncated.append(i)
                name = names[i] if names else f"text {i}"
                warnings.warn(f"{name}: longer than {self.max_text_tokens} tokens, truncated", stacklevel=2)
        length = max(len(r) for r in rows)
        input_ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
        return EncodedBatch(input_ids, attention_mask, truncated)


def write_tokenizer_files(tokenizer: Tokenizer, folder: str | Path, chat_template: str = CHAT_TEMPLATE) -> None:
    """tokenizer.json plus the HF tokenizer_config.json (with the chat template)."""
    folder = Path(folder)
    tokenizer.save(str(folder / TOKENIZER_FILE))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 32768,
        "chat_template": chat_template,
        "extra_special_tokens": {"image_token": IMAGE_PAD},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

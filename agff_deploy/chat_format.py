"""A model's chat template, rendered once around one user turn into the text before and after the item.

The runtime formats items by concatenating `head + item + tail`, so it needs
neither Jinja nor transformers on a Jetson. Rendering happens when a model is
trained or exported from a folder: its own template (the one transformers
would apply), or its family's published one, said in one line, when the folder
has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ArtifactError
from .tokenization import IMAGE_PLACEHOLDER, TOKENIZER_FILE, TaskSlot

if TYPE_CHECKING:
    from .families import ModelFamily

_TEXT_MARK = "\u2063agff-text\u2063"
_TASK_MARK = "\u2063agff-task\u2063"


@dataclass(frozen=True)
class ChatFormat:
    head: str  # everything before the item's image and text: system turn, user turn opening
    tail: str  # everything after: user turn end, assistant opening (+ a pooled end token for last-token embedders)
    task: TaskSlot | None = None  # where a per-call task instruction goes in `head`, when the system turn holds one


def read_chat_template(folder: str | Path, family: ModelFamily) -> tuple[str, list[str]]:
    """The folder's chat template, looked up where transformers saves it, and notes (one when none was found: the
    family's published one is used)."""
    folder = Path(folder)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(), []
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            try:
                template = json.loads(path.read_text()).get("chat_template")
            except json.JSONDecodeError as err:
                raise ArtifactError(f"{path} is not valid JSON: {err}") from err
            if isinstance(template, str):
                return template, []
    return family.chat_template, [f"{folder}: no chat template; used {family.label}'s published one"]


def render_chat_format(
    template: str, folder: str | Path, system: str | None = None, end: str = "", punctuate: bool = False
) -> ChatFormat:
    """`template` rendered (as transformers renders it) around a user turn of an image and a text; `end` is appended
    after the assistant's opening (the `<|endoftext|>` that last-token embedders read out).

    `system` is the system turn's task instruction: the default of a `TaskSlot` that lets each call put another
    there (`punctuate`: with a full stop added where it ends without punctuation). None: no task, the system turn
    is whatever the template does without one.
    """
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(folder) / TOKENIZER_FILE))
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _TEXT_MARK}]}
    messages = ([{"role": "system", "content": _TASK_MARK}] if system is not None else []) + [user]
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    head, found, rest = rendered.partition(IMAGE_PLACEHOLDER)
    between, marked, tail = rest.partition(_TEXT_MARK)
    if not found or not marked or between:
        raise ArtifactError(
            f"{folder}: its chat template does not render an image followed by its text in the user turn; "
            "agff-deploy formats items that way"
        )
    if system is None:
        return ChatFormat(head, tail + end)
    prefix, placed, suffix = head.partition(_TASK_MARK)
    if not placed:
        raise ArtifactError(f"{folder}: its chat template does not render a system turn's text; it takes no task")
    task = TaskSlot(prefix, suffix, system, punctuate)
    return ChatFormat(task.head(), tail + end, task)

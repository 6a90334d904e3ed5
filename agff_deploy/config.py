"""Config-first description of an AGFF-Embed model.

Everything that changes the numbers a model produces lives here and is saved as
JSON beside the weights, so a checkpoint, an export and a runtime never have to
guess a knob.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .contract import model_sizes
from .errors import ArtifactError, InputError, MissingFileError
from .manifest import ImageFormat
from .preprocessing import NativeImageSettings
from .tokenization import USER_HEAD, USER_TAIL, TaskSlot

if TYPE_CHECKING:
    from .families import ModelFamily

CONFIG_FILE = "agff_config.json"
IMAGE_RESIZE_MODES = ("fixed", "native")
# "prompts": the K+1 AGFF read-outs after the item; "last-token": one embedding, the last token's state (GME's way).
POOLINGS = ("prompts", "last-token")


def source_config_file(folder: str | Path) -> Path:
    """The config a bundle's source is pinned by: an AGFF checkpoint's agff_config.json, or a published folder's
    config.json (exported with last-token pooling, `agff_deploy.single_vector`)."""
    own = Path(folder) / CONFIG_FILE
    return own if own.is_file() else Path(folder) / "config.json"


@dataclass
class AGFFConfig:
    """AGFF knobs plus the base vision-language architecture they sit on.

    `base` holds the base model's transformers config as a plain dict
    (`to_dict()` output; its `model_type` picks the family,
    `agff_deploy.families`), so a checkpoint is self-contained and a real
    Qwen2-VL or Qwen3-VL folder's config drops in unchanged. `extra` is
    free-form metadata a user wants carried with the checkpoint (data source,
    notes); nothing in agff-deploy reads it.

    Images are sized one of two ways (`image_resize`): "fixed" squashes every
    image to `image_size`; "native" keeps each image's aspect ratio and
    resizes it by Qwen's `smart_resize` within the pixel range of
    `image_settings`, as the model's own processor does. `image_settings`
    holds `NativeImageSettings` fields other than the patch and merge sizes
    (which are the base's): mean, std, min/max pixels, the aspect-ratio limit;
    the ones it lacks take transformers' Qwen2-VL image processor defaults.

    `chat_head` + item + `chat_tail` is the chat turn an item is formatted as
    (`agff_deploy.chat_format` renders them from a folder's template).
    `pooling` "last-token" makes a single-vector embedder as published
    embedders do (K = 0, no prompts: the last token's state);
    `embedding_dim` keeps its leading dimensions, renormalised (Matryoshka).
    `empty_text` is what a text-only item with no text becomes (Qwen3-VL-
    Embedding's "NULL"). `task` is a single-vector embedder's `TaskSlot` (as
    a dict): where each call's task instruction goes in `chat_head`.
    """

    base: dict[str, Any]
    num_fine: int = 4
    prompt_length: int = 1
    image_size: tuple[int, int] = (112, 112)
    t_in: float = 0.05
    t_f: float = 0.05
    pattern_bias: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    temperature: float = 0.05
    ega_alpha: float = 0.0  # EGA off: it did not help where measured (docs/results.md); --ega-alpha 1 turns it on
    max_text_tokens: int = 64
    image_resize: str = "fixed"
    image_settings: dict[str, Any] = field(default_factory=dict)
    chat_head: str = USER_HEAD
    chat_tail: str = USER_TAIL
    pooling: str = "prompts"
    embedding_dim: int | None = None
    empty_text: str = ""
    matryoshka: bool = False  # the embeddings' leading dimensions are embeddings too (a served `dimensions` may cut)
    task: dict[str, Any] | None = None
    preset: str = "custom"
    base_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_size = tuple(int(s) for s in self.image_size)  # type: ignore[assignment]
        self.pattern_bias = tuple(float(b) for b in self.pattern_bias)  # type: ignore[assignment]
        self.validate()

    @property
    def num_prompts(self) -> int:
        return self.num_fine + 1

    @property
    def task_slot(self) -> TaskSlot | None:
        return None if self.task is None else TaskSlot(**self.task)

    @property
    def family(self) -> ModelFamily:
        """The base's model family (imported here: the runtime reads configs without torch)."""
        from .families import family_of

        return family_of(self.base)

    @property
    def hidden_size(self) -> int:
        """The language model's width: its image features' and prompts'."""
        return int(self.base["text_config"]["hidden_size"])

    @property
    def output_size(self) -> int:
        """The embeddings' width: the language model's, or the Matryoshka `embedding_dim`."""
        return self.embedding_dim or self.hidden_size

    def sizes(self) -> dict[str, int]:
        """The graph contract's model dimensions for this model."""
        return model_sizes(
            self.patch_size,
            self.num_prompts,
            self.output_size,
            width=self.hidden_size,
            deepstack=self.family.deepstack_layers(self.base),
        )

    @property
    def patch_size(self) -> int:
        return int(self.base["vision_config"]["patch_size"])

    @property
    def merge_size(self) -> int:
        return int(self.base["vision_config"]["spatial_merge_size"])

    @property
    def merged_grid(self) -> tuple[int, int]:
        """Image tokens per side after the 2x2 patch merge: what the LLM sees."""
        step = self.patch_size * self.merge_size
        return self.image_size[0] // step, self.image_size[1] // step

    @property
    def native(self) -> bool:
        return self.image_resize == "native"

    @property
    def native_settings(self) -> NativeImageSettings:
        """The image settings, with this model's patch and merge sizes."""
        vision = self.base["vision_config"]
        return NativeImageSettings.from_dict(
            {
                **self.image_settings,
                "patch_size": self.patch_size,
                "merge_size": self.merge_size,
                "temporal_patch_size": int(vision.get("temporal_patch_size", 2)),
            }
        )

    def image_format(self) -> ImageFormat:
        """How this model's images become patches, as a bundle manifest records it."""
        settings = self.native_settings
        return ImageFormat(
            size=self.image_size,
            mean=settings.mean,
            std=settings.std,
            num_image_tokens=self.num_image_tokens,
            patch_size=self.patch_size,
            merge_size=self.merge_size,
            resize=self.image_resize,
            min_pixels=settings.min_pixels,
            max_pixels=settings.max_pixels,
            max_ratio=settings.max_ratio,
        )

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image at the fixed size; at native resolution, the most one image can give."""
        if self.native:
            return self.native_settings.max_pixels // (self.patch_size * self.merge_size) ** 2
        gh, gw = self.merged_grid
        return gh * gw

    def with_pixels(self, min_pixels: int | None, max_pixels: int | None) -> AGFFConfig:
        """This config with native resolution's pixel range narrowed or widened (None: kept)."""
        if not self.native:
            raise InputError(
                f"--min-pixels / --max-pixels size native-resolution images; this model squashes every image to "
                f"{self.image_size[0]}x{self.image_size[1]}: use --image-size"
            )
        chosen = {"min_pixels": min_pixels, "max_pixels": max_pixels}
        settings = {**self.image_settings, **{k: v for k, v in chosen.items() if v is not None}}
        return dataclasses.replace(self, image_settings=settings)

    def validate(self) -> None:
        if self.num_fine < 0:
            raise InputError(f"num_fine must be >= 0 (0 = single global embedding), got {self.num_fine}")
        if self.prompt_length < 1:
            raise InputError(f"prompt_length must be >= 1, got {self.prompt_length}")
        step = self.patch_size * self.merge_size
        h, w = self.image_size
        if h <= 0 or w <= 0 or (self.image_resize == "fixed" and (h % step or w % step)):
            raise InputError(
                f"image_size {h}x{w} is not a positive multiple of patch_size*spatial_merge_size = {step}; "
                f"pick e.g. {max(step, h // step * step)}x{max(step, w // step * step)}"
            )
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.pooling == "last-token" and self.num_fine:
            raise InputError(f"last-token pooling gives one embedding: num_fine must be 0, got {self.num_fine}")
        if self.embedding_dim is not None:
            self._validate_embedding_dim()
        if self.image_resize not in IMAGE_RESIZE_MODES:
            raise InputError(f"image_resize must be one of {', '.join(IMAGE_RESIZE_MODES)}, got {self.image_resize!r}")
        self.native_settings  # noqa: B018 - refuses settings NativeImageSettings would not accept, naming the field
        for name in ("t_in", "t_f", "temperature"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")

    def _validate_embedding_dim(self) -> None:
        if self.pooling != "last-token":
            raise InputError("--dim keeps the leading dimensions of a single-vector embedder: use --pooling last-token")
        if not 1 <= self.embedding_dim <= self.hidden_size:
            raise InputError(
                f"--dim {self.embedding_dim}: choose a width from 1 to the hidden size, {self.hidden_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size)
        data["pattern_bias"] = list(self.pattern_bias)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AGFFConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArtifactError(f"unknown AGFFConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> AGFFConfig:
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            published = (Path(folder) / "config.json").is_file()
            hint = (
                "; a published single-vector embedder folder (GME, Qwen3-VL-Embedding) exports with "
                f"`python -m export.to_onnx {folder} --pooling last-token`"
                if published
                else ""
            )
            raise MissingFileError(
                f"{path} not found: a checkpoint folder holds {CONFIG_FILE} (write one with `python -m train.run`)"
                + hint
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(data)

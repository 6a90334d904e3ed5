"""Image preprocessing in numpy and Pillow (no torch), shared by trainer and runtime.

Two ways to size an image, both rescaled and normalised exactly as
transformers' Qwen2-VL image processor (slow, PIL path) does:

- `ImagePreprocessor`: one fixed size, the image squashed to it. A TensorRT
  user with one static shape may want this; it ignores the aspect ratio.
- `NativePreprocessor`: Qwen2-VL's native resolution. `smart_resize` keeps the
  aspect ratio, makes both sides multiples of patch * merge and keeps the
  area between min_pixels and max_pixels, so each image gets its own patch
  grid. Its settings (`NativeImageSettings`) come from the base folder's
  processor config, as transformers reads it, and travel as JSON in
  checkpoints and bundle manifests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ArtifactError, ImageSizeError, InputError, MissingFileError
from .images import to_rgb

PREPROCESSOR_FILE = "preprocessor_config.json"
# transformers 5 saves a processor's image settings nested in this file (key "image_processor") and reads them first.
PROCESSOR_FILE = "processor_config.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# transformers' Qwen2VLImageProcessor defaults: what it uses for a key its config lacks.
QWEN2VL_MIN_PIXELS = 56 * 56
QWEN2VL_MAX_PIXELS = 28 * 28 * 1280
# transformers and qwen-vl-utils both refuse images longer than 200 times their width (or the reverse).
MAX_ASPECT_RATIO = 200.0


@dataclass(frozen=True)
class ImagePreprocessor:
    height: int
    width: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def resize(self, image: Image.Image) -> np.ndarray:
        """RGB uint8 `[H, W, 3]` at the model's resolution."""
        rgb = to_rgb(image)
        if rgb.size != (self.width, self.height):
            rgb = rgb.resize((self.width, self.height), Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8)

    def is_resized(self, pixels: np.ndarray) -> bool:
        """Whether a uint8 array is already `[H, W, 3]` at the model's resolution."""
        return pixels.shape == (self.height, self.width, 3) and pixels.dtype == np.uint8

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 `[..., H, W, 3]` -> float32 `[..., 3, H, W]`."""
        return normalize(pixels, self.mean, self.std)

    def to_hf_dict(self, patch_size: int, merge_size: int) -> dict:
        """Qwen2-VL processor settings that reproduce this preprocessing at the fixed size."""
        pixels = self.height * self.width
        return {
            **_HF_PROCESSOR,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "patch_size": patch_size,
            "merge_size": merge_size,
            "temporal_patch_size": 2,
            "size": {"shortest_edge": pixels, "longest_edge": pixels},
            "agff_fixed_size": [self.height, self.width],
        }

    def save(self, folder: str | Path, patch_size: int, merge_size: int) -> None:
        path = Path(folder) / PREPROCESSOR_FILE
        path.write_text(json.dumps(self.to_hf_dict(patch_size, merge_size), indent=2) + "\n")


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 `[..., H, W, 3]` -> float32 `[..., 3, H, W]`, rounding as transformers does.

    transformers rescales in float64 and casts to float32 before normalising in float32; doing the same makes our
    pixels bit-equal to its processor's, not just close.
    """
    scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    normalized = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(normalized, -1, -3))


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = QWEN2VL_MIN_PIXELS,
    max_pixels: int = QWEN2VL_MAX_PIXELS,
    max_ratio: float = MAX_ASPECT_RATIO,
) -> tuple[int, int]:
    """The `(height, width)` transformers' Qwen2-VL `smart_resize` gives an image of this size.

    Sides become multiples of `factor` (patch * merge), the aspect ratio is kept as closely as that allows and the
    area is brought within [min_pixels, max_pixels]. Images smaller than `factor` are scaled up, as transformers
    does. The reference raises a bare ValueError for an aspect ratio over 200; ours is an `ImageSizeError` that
    says what to do, and a side of 0 pixels (a ZeroDivisionError there) is one too.
    """
    if height <= 0 or width <= 0:
        raise ImageSizeError(f"{width}x{height} image has no pixels; give an image at least 1x1")
    ratio = max(height, width) / min(height, width)
    if ratio > max_ratio:
        raise ImageSizeError(
            f"{width}x{height} image has an aspect ratio of {ratio:.1f}, over the limit of {max_ratio:g}; "
            f"crop or pad it to at most {max_ratio:g}:1"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class NativeImageSettings:
    """What native-resolution preprocessing needs, as a Qwen2-VL processor config holds it (defaults: the model's)."""

    min_pixels: int = QWEN2VL_MIN_PIXELS
    max_pixels: int = QWEN2VL_MAX_PIXELS
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    max_ratio: float = MAX_ASPECT_RATIO

    def __post_init__(self) -> None:
        # JSON and flags give lists; tuples keep the settings hashable and comparable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        sizes = ("min_pixels", "max_pixels", "patch_size", "merge_size", "temporal_patch_size")
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"image settings: {name} must be a positive integer, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise InputError(
                f"image settings: min_pixels {self.min_pixels} is over max_pixels {self.max_pixels}; "
                "give a min_pixels at most max_pixels"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InputError(f"image settings: mean and std need 3 values, std above 0; got {self.mean}, {self.std}")
        if self.max_ratio < 1:
            raise InputError(f"image settings: max_ratio must be at least 1, got {self.max_ratio}")

    @property
    def factor(self) -> int:
        """Side lengths are multiples of this: a merged token covers merge_size x merge_size patches."""
        return self.patch_size * self.merge_size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """`smart_resize` with these settings."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels, self.max_ratio)

    def to_dict(self) -> dict:
        """JSON-ready, for checkpoints and bundle manifests."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> NativeImageSettings:
        """The inverse of `to_dict`; keys it does not know mean an artifact from another version."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ArtifactError(f"image settings: unknown keys {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_preprocessor_config(
        cls, source: str | Path, fallback: NativeImageSettings | None = None, family: str = "Qwen2-VL"
    ) -> tuple[NativeImageSettings, list[str]]:
        """Settings from a `save_pretrained` folder (or a config file) as transformers reads them, and notes.

        A folder is read as transformers 5 reads it: `processor_config.json`'s nested "image_processor" first, then
        `preprocessor_config.json`. Within those, flat `min_pixels`/`max_pixels` (4.4x) win over
        `size.shortest_edge`/`size.longest_edge` (4.5x, 5.x), then 4.45's `size.min_pixels`/`size.max_pixels`;
        keys absent take transformers' defaults. A folder with neither file gets `fallback` (the `family`'s
        published processor settings; Qwen2-VL's by default) and one note saying so, so the user knows their model
        may have wanted others.
        """
        path = Path(source)
        if not path.exists():
            raise MissingFileError(f"{path}: no such file or folder")
        if path.is_file():
            values = _read_json(path)
            return _settings_from_hf(values.get("image_processor", values), path), []
        nested = path / PROCESSOR_FILE
        if nested.is_file() and isinstance(image_processor := _read_json(nested).get("image_processor"), dict):
            return _settings_from_hf(image_processor, nested), []
        if (path / PREPROCESSOR_FILE).is_file():
            return _settings_from_hf(_read_json(path / PREPROCESSOR_FILE), path / PREPROCESSOR_FILE), []
        chosen = fallback or cls()
        return chosen, [
            f"{path}: no {PREPROCESSOR_FILE} or {PROCESSOR_FILE}; used the published {family} image settings "
            f"(min_pixels {chosen.min_pixels}, max_pixels {chosen.max_pixels}, mean {_short(chosen.mean)}, "
            f"std {_short(chosen.std)})"
        ]


def _short(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _read_json(path: Path) -> dict:
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: not a JSON processor config ({err})") from err
    if not isinstance(values, dict):
        raise ArtifactError(f"{path}: not a JSON processor config (a {type(values).__name__}, not an object)")
    return values


# Processor options whose other values our preprocessing does not reproduce; a config that sets them is refused.
_FIXED_OPTIONS = {"do_resize": True, "do_rescale": True, "do_normalize": True, "resample": 3}


def _settings_from_hf(values: dict, path: Path) -> NativeImageSettings:
    for key, expected in _FIXED_OPTIONS.items():
        if values.get(key, expected) != expected:
            raise ArtifactError(f"{path}: {key} is {values[key]!r}; native preprocessing supports only {expected!r}")
    if not math.isclose(values.get("rescale_factor", 1 / 255), 1 / 255, rel_tol=1e-9):
        raise ArtifactError(f"{path}: rescale_factor is {values['rescale_factor']}; only 1/255 is supported")
    size = values.get("size") or {}
    if not isinstance(size, dict):
        raise ArtifactError(f"{path}: size is {size!r}; a Qwen2-VL config gives shortest_edge and longest_edge")
    defaults = NativeImageSettings()
    pixels = {}
    for flat, new, old, default in (
        ("min_pixels", "shortest_edge", "min_pixels", defaults.min_pixels),
        ("max_pixels", "longest_edge", "max_pixels", defaults.max_pixels),
    ):
        found = next((v for v in (values.get(flat), size.get(new), size.get(old)) if v is not None), None)
        if found is None and size:
            # transformers replaces its whole default size by the file's, then refuses to resize without this key
            raise ArtifactError(f"{path}: size {size} gives no {new}; transformers cannot resize with it either")
        pixels[flat] = default if found is None else found
    try:
        return NativeImageSettings(
            **pixels,
            patch_size=values.get("patch_size", defaults.patch_size),
            merge_size=values.get("merge_size", defaults.merge_size),
            temporal_patch_size=values.get("temporal_patch_size", defaults.temporal_patch_size),
            mean=values.get("image_mean", defaults.mean),
            std=values.get("image_std", defaults.std),
        )
    except (InputError, TypeError) as err:
        raise ArtifactError(f"{path}: {err}") from err


@dataclass(frozen=True)
class NativePreprocessor:
    """Qwen2-VL's native-resolution preprocessing: each image resized by `smart_resize` to its own size."""

    settings: NativeImageSettings = NativeImageSettings()

    def resize(self, image: Image.Image) -> np.ndarray:
        """RGB uint8 `[h, w, 3]` at the image's `smart_resize` size; an ImageSizeError for a shape it refuses.

        Call it per item and catch the error there, so one bad image does not fail its batch.
        """
        rgb = to_rgb(image)
        height, width = self.settings.resized_size(rgb.height, rgb.width)
        if rgb.size != (width, height):
            rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8)

    def is_resized(self, pixels: np.ndarray) -> bool:
        """Whether a uint8 `[h, w, 3]` array is already at its `smart_resize` size (resizing would not change it)."""
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            return False
        height, width = pixels.shape[:2]
        return self.settings.resized_size(height, width) == (height, width)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 `[..., H, W, 3]` -> float32 `[..., 3, H, W]`."""
        return normalize(pixels, self.settings.mean, self.settings.std)

    def to_hf_dict(self) -> dict:
        """The Qwen2-VL processor config that transformers reads back as these settings."""
        s = self.settings
        return {
            **_HF_PROCESSOR,
            "image_mean": list(s.mean),
            "image_std": list(s.std),
            "patch_size": s.patch_size,
            "merge_size": s.merge_size,
            "temporal_patch_size": s.temporal_patch_size,
            "min_pixels": s.min_pixels,
            "max_pixels": s.max_pixels,
            "size": {"shortest_edge": s.min_pixels, "longest_edge": s.max_pixels},
        }

    def save(self, folder: str | Path, patch_size: int, merge_size: int) -> None:
        """Write `preprocessor_config.json` (the patch and merge sizes are the settings' own; checked to agree)."""
        if (patch_size, merge_size) != (self.settings.patch_size, self.settings.merge_size):
            settings = self.settings
            raise InputError(f"image settings are for patch {settings.patch_size}, merge {settings.merge_size}")
        (Path(folder) / PREPROCESSOR_FILE).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")


# What every Qwen2-VL processor config we write says beside its sizes: the steps our preprocessing reproduces.
_HF_PROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "resample": 3,
}

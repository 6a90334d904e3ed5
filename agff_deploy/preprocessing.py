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

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 `[..., H, W, 3]` -> float32 `[..., 3, H, W]`."""
        return normalize(pixels, self.mean, self.std)

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        return self.normalize(np.stack([self.resize(im) for im in images]))

    def to_hf_dict(self, patch_size: int, merge_size: int) -> dict:
        """Qwen2-VL processor settings that reproduce this preprocessing at the fixed size."""
        pixels = self.height * self.width
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_convert_rgb": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "resample": 3,
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
    def from_preprocessor_config(cls, source: str | Path) -> tuple[NativeImageSettings, list[str]]:
        """Settings from a `save_pretrained` folder (or a config file) as transformers reads them, and notes.

        A folder is read as transformers 5 reads it: `processor_config.json`'s nested "image_processor" first, then
        `preprocessor_config.json`. Within those, flat `min_pixels`/`max_pixels` (4.4x) win over
        `size.shortest_edge`/`size.longest_edge` (4.5x, 5.x), then 4.45's `size.min_pixels`/`size.max_pixels`;
        keys absent take transformers' defaults. A folder with neither file gets the published defaults and one
        note saying so, so the user knows their model may have wanted others.
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
        defaults = cls()
        return defaults, [
            f"{path}: no {PREPROCESSOR_FILE} or {PROCESSOR_FILE}; used the published Qwen2-VL image settings "
            f"(min_pixels {defaults.min_pixels}, max_pixels {defaults.max_pixels}, CLIP mean and std)"
        ]


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
class NativeBatch:
    """Images of different sizes in one padded array, and each one's patch grid.

    `pixel_values` float32 `[B, 3, Hmax, Wmax]`: image i fills the top-left `grid[i] * patch_size` pixels, zeros
    (after normalisation) elsewhere. `grid` int64 `[B, 2]`: patch rows and columns of each image.
    """

    pixel_values: np.ndarray
    grid: np.ndarray
    patch_size: int

    def image(self, index: int) -> np.ndarray:
        """Image `index` without its padding, `[3, h, w]`."""
        rows, cols = (int(v) * self.patch_size for v in self.grid[index])
        return self.pixel_values[index, :, :rows, :cols]


@dataclass(frozen=True)
class NativePreprocessor:
    """Qwen2-VL's native-resolution preprocessing: each image resized by `smart_resize`, batches padded."""

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

    def pack(self, resized: Sequence[np.ndarray]) -> NativeBatch:
        """Normalise images from `resize` and pad them into one batch (see `NativeBatch`)."""
        if not resized:
            raise InputError("no images to preprocess")
        factor, patch = self.settings.factor, self.settings.patch_size
        shapes = [pixels.shape[:2] for pixels in resized]
        if any(h % factor or w % factor for h, w in shapes):
            raise InputError(f"image sizes {shapes} are not all multiples of {factor}; resize them with `resize`")
        batch = np.zeros((len(resized), 3, max(h for h, _ in shapes), max(w for _, w in shapes)), np.float32)
        for i, pixels in enumerate(resized):
            batch[i, :, : pixels.shape[0], : pixels.shape[1]] = normalize(pixels, self.settings.mean, self.settings.std)
        return NativeBatch(batch, np.array([(h // patch, w // patch) for h, w in shapes], dtype=np.int64), patch)

    def __call__(self, images: Sequence[Image.Image]) -> NativeBatch:
        return self.pack([self.resize(image) for image in images])

    def merged_tokens(self, grid: np.ndarray) -> np.ndarray:
        """Image tokens each item takes in the language model, `[B]`: its patches over merge_size squared."""
        grid = np.asarray(grid, dtype=np.int64)
        return grid[:, 0] * grid[:, 1] // self.settings.merge_size**2


def hf_patches(
    pixel_values: np.ndarray, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """One image `[3, H, W]` in transformers' flat layout: patches `[h*w, 3*T*p*p]` and grid_thw `[[1, h, w]]`.

    Rows go merge block by merge block (each block's merge x merge patches together, as the patch merger reads
    them); a still image is repeated over the T frames of a temporal patch. Lets our padded layout be compared
    with transformers', and feeds graphs that take its layout.
    """
    channels, height, width = pixel_values.shape
    factor = patch_size * merge_size
    if height % factor or width % factor:
        raise InputError(f"a {width}x{height} image does not split into {factor}-pixel merge blocks")
    rows, cols = height // patch_size, width // patch_size
    blocks = pixel_values.reshape(
        channels, rows // merge_size, merge_size, patch_size, cols // merge_size, merge_size, patch_size
    ).transpose(1, 4, 2, 5, 0, 3, 6)  # (block row, block col, row in block, col in block, C, py, px)
    frames = np.broadcast_to(blocks[:, :, :, :, :, None], (*blocks.shape[:5], temporal_patch_size, *blocks.shape[5:]))
    patches = frames.reshape(rows * cols, channels * temporal_patch_size * patch_size * patch_size)
    return np.ascontiguousarray(patches, dtype=np.float32), np.array([[1, rows, cols]], dtype=np.int64)

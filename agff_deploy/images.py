"""Opening user images safely and turning them into RGB the way transformers does.

Every image file anywhere in the project is decoded here: the runtime
(agff-run, the Embedder), training pairs and the MMEB-train reader, int8
calibration folders and evaluation, so a photo is the same pixels wherever it
is used. No torch. Every failure is an `ImageLoadError` that names the file.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

DEFAULT_MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"})
# Leading bytes of the common video containers: (offset, bytes, what). MP4 and QuickTime share the ISO media
# file's `ftyp` box with AVIF and HEIC images, told apart by the brand after it (`STILL_IMAGE_BRANDS`).
VIDEO_SIGNATURES = (
    (4, b"ftyp", "MP4/QuickTime"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"FLV", "Flash video"),
    (0, b"\x00\x00\x01\xba", "MPEG"),
)
STILL_IMAGE_BRANDS = frozenset({b"avif", b"heic", b"heix", b"mif1", b"heim", b"heis"})


class ImageLoadError(InputError):
    """An image file that cannot be used as given; the message names the file and why."""


# Pillow's integer modes for 16-bit (and 32-bit) single-channel data: 16-bit PNG and TIFF greyscale open as these.
WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, compositing transparency onto white (transformers' `convert_to_rgb`); 16-bit greyscale scaled to 8 bits.

    Pillow's own conversion of a 16-bit greyscale image clips every value over 255, which turns a photo white.
    Pillow already reduces 16-bit RGB files to 8 bits when it opens them.
    """
    if image.mode in WIDE_GREY_MODES:
        values = np.asarray(image, dtype=np.int64)
        image = Image.fromarray(((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8), mode="L")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """Decode `path` to an upright RGB image; notes say what was done that a user should know."""
    with _opened(Path(path), max_pixels) as image:
        return _upright_rgb(image, str(path))


def decode_image_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """`open_image` for an encoded file received in memory (a server request); `name` stands for the path."""
    if not data:
        raise ImageLoadError(f"{name}: empty (0 bytes)")
    kind = _video_kind(data)
    if kind:
        raise _video_error(name, kind)
    with _pillow_opened(io.BytesIO(data), name, max_pixels) as image:
        return _upright_rgb(image, name)


def _upright_rgb(image: Image.Image, name: str) -> tuple[Image.Image, list[str]]:
    notes = []
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        image.seek(0)
        notes.append(f"{name}: has {frames} frames; used the first")
    image.load()
    return to_rgb(ImageOps.exif_transpose(image)), notes


def verify_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """`open_image`'s checks without decoding the pixels: cheap enough to run on every row of a data file."""
    with _opened(Path(path), max_pixels) as image:
        image.verify()


@contextmanager
def _opened(path: Path, max_pixels: int) -> Iterator[Image.Image]:
    """`path` opened by Pillow after the checks every reader needs; whatever fails becomes an ImageLoadError."""
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        raise _video_error(str(path), path.suffix.lower())
    with _pillow_opened(path, str(path), max_pixels) as image:
        yield image


@contextmanager
def _pillow_opened(source: Path | IO[bytes], name: str, max_pixels: int) -> Iterator[Image.Image]:
    """Pillow's image of a file or buffer; whatever Pillow raises becomes an ImageLoadError naming `name`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                _refuse_bombs(name, image, max_pixels)
                yield image
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"{name}: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{name}: not an image Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{name}: unreadable or truncated image ({err})") from err


def _video_kind(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "AVI"
    if data[4:8] == b"ftyp" and data[8:12] in STILL_IMAGE_BRANDS:
        return None
    return next((what for offset, magic, what in VIDEO_SIGNATURES if data[offset : offset + len(magic)] == magic), None)


def _video_error(name: str, kind: str) -> ImageLoadError:
    return ImageLoadError(
        f"{name}: a video ({kind}); agff-deploy embeds images and text only: extract frames "
        "(e.g. `ffmpeg -i VIDEO -vf fps=1 frame_%04d.png`) and embed them as images"
    )


def _refuse_bombs(name: str, image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{name}: {width}x{height} is {width * height / 1e6:.0f} MP, over the "
            f"{max_pixels / 1e6:.0f} MP cap (possible decompression bomb); "
            "raise --max-pixels if the image is genuine"
        )

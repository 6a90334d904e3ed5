"""Opening user images safely and turning them into RGB the way transformers does.

No torch: shared by the runtime (agff-run), the trainer's MMEB reader and
calibration. Every failure is an `ImageLoadError` that names the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000


class ImageLoadError(ValueError):
    pass


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, compositing transparency onto white (transformers' `convert_to_rgb`)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """Decode `path` to an upright RGB image; notes say what was done that a user should know."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file")
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"{path}: {width}x{height} is {width * height / 1e6:.0f} MP, over the "
                        f"{max_pixels / 1e6:.0f} MP cap (possible decompression bomb); "
                        "raise --max-pixels if the image is genuine"
                    )
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    image.seek(0)
                    notes.append(f"{path}: has {frames} frames; used the first")
                image.load()
                upright = ImageOps.exif_transpose(image)
                return to_rgb(upright), notes
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{path}: {err}") from err
    except Image.DecompressionBombWarning as err:
        raise ImageLoadError(f"{path}: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{path}: not an image Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{path}: unreadable or truncated image ({err})") from err

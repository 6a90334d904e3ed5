"""numpy/Pillow preprocessing equals transformers' Qwen2-VL image processor on real photos (bar: 1e-5)."""

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from agff_deploy.images import ImageLoadError, open_image
from agff_deploy.preprocessing import ImagePreprocessor

BAR = 1e-5


def hf_processor(size: int) -> Qwen2VLImageProcessorPil:
    settings = ImagePreprocessor(size, size).to_hf_dict(patch_size=14, merge_size=2)
    return Qwen2VLImageProcessorPil(
        **{k: v for k, v in settings.items() if k not in ("image_processor_type", "agff_fixed_size")}
    )


def unpatchify(patches: np.ndarray, size: int, patch: int = 14, merge: int = 2) -> np.ndarray:
    """HF's flat `[N, C*T*p*p]` patches back to `[3, H, W]`."""
    grid = size // patch
    x = patches.reshape(grid // merge, grid // merge, merge, merge, 3, 2, patch, patch)[:, :, :, :, :, 0]
    return x.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, size, size)


def write_variant(kind: str, folder) -> str:
    astronaut = Image.fromarray(data.astronaut())
    path = folder / {"jpeg": "a.jpg", "cmyk": "c.jpg", "exif": "e.jpg"}.get(kind, f"{kind}.png")
    if kind == "jpeg":
        astronaut.save(path)
    elif kind == "greyscale":
        Image.fromarray(data.camera()).save(path)
    elif kind == "rgba":
        pixels = np.array(astronaut.convert("RGBA"))
        pixels[..., 3] = np.linspace(0, 255, pixels.shape[1]).astype(np.uint8)[None, :]
        Image.fromarray(pixels).save(path)
    elif kind == "palette":
        astronaut.quantize(64).save(path)
    elif kind == "cmyk":
        astronaut.convert("CMYK").save(path)
    elif kind == "16-bit":
        Image.fromarray(data.camera().astype(np.uint16) * 257).save(path)
    elif kind == "exif":
        exif = astronaut.getexif()
        exif[0x0112] = 6  # rotate 90 degrees on display
        astronaut.save(path, exif=exif)
    elif kind == "coffee":
        Image.fromarray(data.coffee()[:400, 100:500]).save(path)
    return path


@pytest.mark.parametrize("kind", ["jpeg", "greyscale", "rgba", "palette", "cmyk", "16-bit", "exif", "coffee"])
@pytest.mark.parametrize("size", [56, 112])
def test_preprocessing_equals_transformers_processor(tmp_path, kind, size):
    path = write_variant(kind, tmp_path)
    ours_pre = ImagePreprocessor(size, size)
    ours = ours_pre.normalize(ours_pre.resize(open_image(path)[0])[None])[0]
    # transformers converts with Pillow, which clips 16-bit greyscale to white; ours scales it to the 8 bits it holds
    source = Image.fromarray(data.camera()) if kind == "16-bit" else ImageOps.exif_transpose(Image.open(path))
    theirs = hf_processor(size)(images=[source], return_tensors="np")
    assert theirs["image_grid_thw"].tolist() == [[1, size // 14, size // 14]]
    assert np.abs(ours - unpatchify(theirs["pixel_values"], size)).max() <= BAR


def test_exif_orientation_is_applied(tmp_path):
    image = np.asarray(open_image(write_variant("exif", tmp_path))[0]).astype(int)
    stored = data.astronaut().astype(int)
    upright = np.asarray(Image.fromarray(data.astronaut()).transpose(Image.Transpose.ROTATE_270)).astype(int)
    assert np.abs(image - upright).mean() < 5  # JPEG noise only
    assert np.abs(image - stored).mean() > 30


def test_animated_images_use_the_first_frame_and_say_so(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    image, notes = open_image(tmp_path / "anim.gif")
    assert np.asarray(image)[0, 0].tolist() == [255, 0, 0]
    assert notes == [f"{tmp_path / 'anim.gif'}: has 3 frames; used the first"]


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file"), (b"hello, not an image", "not an image Pillow can read")],
)
def test_unreadable_files_get_a_one_line_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=message) as err:
        open_image(path)
    assert str(path) in str(err.value)


def test_truncated_images_are_errors(tmp_path):
    Image.fromarray(data.astronaut()).save(tmp_path / "full.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:5000])
    with pytest.raises(ImageLoadError, match="unreadable or truncated"):
        open_image(tmp_path / "cut.jpg")


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    Image.new("L", (9000, 9000)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageLoadError, match="81 MP, over the 64 MP cap"):
        open_image(tmp_path / "bomb.png")

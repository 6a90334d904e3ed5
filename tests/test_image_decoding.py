"""One image decoder: a photo file is the same pixels in training, in int8 calibration and in the runtime."""

import json

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from agff_deploy.contract import VISION_ENCODER
from agff_deploy.images import ImageLoadError, decode_image_bytes
from export.calibration import calibration_feeds
from runtime.embedder import Embedder
from train.trainer import Trainer, TrainSettings

EXIF_ROTATE_90_CLOCKWISE = 6


def sideways_transparent_photo(path):
    """A 40x24 RGBA PNG stored sideways (EXIF orientation 6), its left half fully transparent, colours that vary
    along both axes: decoded without turning it upright or compositing it on white, its pixels differ."""
    pixels = np.zeros((24, 40, 4), np.uint8)
    pixels[..., 0] = np.arange(40, dtype=np.uint8)[None, :] * 6
    pixels[..., 1] = np.arange(24, dtype=np.uint8)[:, None] * 10
    pixels[..., 2] = 90
    pixels[..., 3] = 255
    pixels[:, :20, 3] = 0
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = EXIF_ROTATE_90_CLOCKWISE
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGBA").save(path, exif=exif)
    return path


def upright_on_white(path) -> Image.Image:
    """What a viewer shows: the stored pixels turned 90 degrees clockwise, transparency over white."""
    with Image.open(path) as stored:
        upright = stored.transpose(Image.Transpose.ROTATE_270)
    white = Image.new("RGBA", upright.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, upright).convert("RGB")


def captured_pixel_values(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every `pixel_values` batch `model` is called with from now on."""
    seen: list[torch.Tensor] = []

    def capture(module, args, kwargs):
        pixels = args[2] if len(args) > 2 else kwargs.get("pixel_values")
        if pixels is not None:
            seen.append(pixels.detach().cpu())

    model.register_forward_pre_hook(capture, with_kwargs=True)
    return seen


def test_the_trainer_sees_the_pixels_the_runtime_sees_for_a_sideways_transparent_photo(tmp_path):
    photo = sideways_transparent_photo(tmp_path / "images" / "photo.png")
    rows = [{"qry": "<|image_1|>", "qry_image_path": "images/photo.png", "pos_text": text} for text in ("a", "b")]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "ckpt"
    trainer = Trainer.create(
        TrainSettings(out=str(out), preset="tiny", steps=1, batch_size=2, eval_pairs=0, data=str(data))
    )
    seen = captured_pixel_values(trainer.model)
    trainer.run()
    with Embedder.load(out) as runtime:
        expected = runtime.encoder.patches(runtime.pixels([photo])).pixel_values[0]
    trained_on = torch.cat(seen).numpy()
    assert trained_on.shape == (2, *expected.shape)
    assert all(np.array_equal(pixels, expected) for pixels in trained_on)


def test_a_calibration_folder_photo_is_calibrated_upright_on_white(tmp_path, encoder):
    photo = sideways_transparent_photo(tmp_path / "calib" / "photo.png")
    feeds = calibration_feeds(encoder, VISION_ENCODER, tmp_path / "calib")
    assert len(feeds) == 1
    assert np.array_equal(feeds[0]["pixel_values"], encoder.pixels([upright_on_white(photo)]).pixel_values)


def test_an_image_received_as_bytes_decodes_to_the_pixels_of_its_file(tmp_path):
    from agff_deploy.images import decode_image_bytes, open_image

    path = sideways_transparent_photo(tmp_path / "sideways.png")
    from_bytes, _ = decode_image_bytes(path.read_bytes(), "request image 0")
    from_file, _ = open_image(path)
    assert from_bytes.size == from_file.size == (24, 40)
    np.testing.assert_array_equal(np.asarray(from_bytes), np.asarray(from_file))


RAMP = np.linspace(0, 65535, 256).astype(np.uint16)


def write_png16(path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (greyscale `[H, W]` or RGB `[H, W, 3]`), encoded by hand: Pillow cannot write 16-bit RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 16, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    from agff_deploy.images import open_image

    write_png16(tmp_path / "grey16.png", np.tile(RAMP, (4, 1)))
    image, _ = open_image(tmp_path / "grey16.png")
    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert np.array_equal(pixels[0, :, 0], np.rint(RAMP / 257).astype(np.uint8))
    assert pixels[0, [0, 85, 170, 255], 1].tolist() == [0, 85, 170, 255]


def test_a_16_bit_rgb_png_is_scaled_to_8_bits_per_channel(tmp_path):
    from agff_deploy.images import open_image

    rgb = np.stack([RAMP, 65535 - RAMP, np.full_like(RAMP, 32768)], axis=-1)
    write_png16(tmp_path / "rgb16.png", np.tile(rgb, (4, 1, 1)))
    pixels = np.asarray(open_image(tmp_path / "rgb16.png")[0])
    assert pixels[0, [0, 85, 170, 255]].tolist() == [[0, 255, 128], [85, 170, 128], [170, 85, 128], [255, 0, 128]]


VIDEO_HEADERS = {
    "MP4/QuickTime": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2mp41",
    "Matroska/WebM": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01",
    "AVI": b"RIFF\x10\x00\x00\x00AVI LIST",
}
VIDEO_ADVICE = (
    "agff-deploy embeds images and text only: extract frames (e.g. `ffmpeg -i VIDEO -vf fps=1 frame_%04d.png`) "
    "and embed them as images"
)


@pytest.mark.parametrize("kind", VIDEO_HEADERS)
def test_video_bytes_are_refused_in_one_line_saying_what_runs_instead(kind):
    with pytest.raises(ImageLoadError) as caught:
        decode_image_bytes(VIDEO_HEADERS[kind], "request item 0")
    assert str(caught.value) == f"request item 0: a video ({kind}); {VIDEO_ADVICE}"


def test_an_avif_image_is_not_taken_for_a_video():
    with pytest.raises(ImageLoadError) as caught:
        decode_image_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "photo.avif")
    assert "a video" not in str(caught.value)


def test_a_video_file_among_images_is_reported_by_name_and_the_images_embed(tiny_bundle, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(VIDEO_HEADERS["MP4/QuickTime"])
    with Embedder.load(tiny_bundle) as model:
        outcome = model.try_embed_images([clip, "samples/astronaut.jpg"])
    assert outcome.errors == [f"{clip}: a video (.mp4); {VIDEO_ADVICE}"]
    assert outcome.stacked().shape[0] == 1

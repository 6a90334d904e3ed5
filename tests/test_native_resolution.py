"""Native resolution end to end on the tiny model: each photo keeps its aspect ratio, a batch mixes sizes, and the
exported bundle gives what PyTorch gives (fp32 bar: max abs <= 1e-4, docs/parity.md)."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from agff_deploy.manifest import read_manifest
from runtime.embedder import Embedder
from tests.conftest import export_bundle

MAX_PIXELS = 112 * 112  # at most 16 image tokens a photo: keeps the tiny run fast
FP32_ABS = 1e-4


@pytest.fixture(scope="module")
def native_checkpoint(tmp_path_factory):
    from train.trainer import Trainer, TrainSettings

    out = tmp_path_factory.mktemp("native") / "ckpt"
    settings = TrainSettings(
        out=str(out), preset="tiny", steps=5, batch_size=8, eval_pairs=0, image_resize="native", max_pixels=MAX_PIXELS
    )
    Trainer.create(settings).run()
    return out


@pytest.fixture(scope="module")
def native_bundle(native_checkpoint):
    out = native_checkpoint.parent / "bundle"
    report = export_bundle(native_checkpoint, out, precisions=("fp32", "fp16"), batch=(1, 4, 8), agreement_pairs=0)
    assert report.passed, report.table()
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three photos of different aspect ratios: wide, tall and square."""
    folder = tmp_path_factory.mktemp("photos")
    images = {"coffee.png": data.coffee(), "tall.png": data.chelsea()[:, :150], "astronaut.png": data.astronaut()}
    for name, pixels in images.items():
        Image.fromarray(pixels).save(folder / name)
    return [folder / name for name in images]


def test_the_manifest_records_native_resolution_and_its_pixel_range(native_bundle):
    image = read_manifest(native_bundle).image
    assert (image.resize, image.max_pixels, image.num_image_tokens) == ("native", MAX_PIXELS, 16)


def test_the_gate_held_one_batch_of_several_image_sizes_to_pytorch(native_bundle):
    manifest = read_manifest(native_bundle)
    with np.load(native_bundle / manifest.gate.file) as gate:
        grids = [gate[key] for key in gate.files if key.endswith("image_grid")]
    assert grids and any(len({tuple(g) for g in grid}) >= 3 for grid in grids)
    assert manifest.parity.passed and {row.precision for row in manifest.parity.rows} == {"fp32", "fp16"}


def test_each_photo_keeps_its_aspect_ratio(native_bundle, photos):
    with Embedder.load(native_bundle) as model:
        pixels = model.pixels(photos)
    shapes = [p.shape[1:] for p in pixels]
    assert shapes[0][1] > shapes[0][0] and shapes[1][0] > shapes[1][1] and shapes[2][0] == shapes[2][1]
    assert all(h * w <= MAX_PIXELS and h % 28 == 0 and w % 28 == 0 for h, w in shapes)


@pytest.mark.parametrize("instruction", ["", "what is in the picture?"])
def test_a_mixed_size_batch_from_onnx_runtime_equals_pytorch(native_bundle, native_checkpoint, photos, instruction):
    with Embedder.load(native_bundle) as onnx_model, Embedder.load(native_checkpoint) as torch_model:
        ours = onnx_model.embed_images(photos, instruction)
        reference = torch_model.embed_images(photos, instruction)
    assert np.abs(ours - reference).max() <= FP32_ABS


def test_an_image_embeds_the_same_alone_as_in_a_batch_of_other_sizes(native_bundle, photos):
    with Embedder.load(native_bundle) as model:
        together = model.embed_images(photos)
        alone = np.concatenate([model.embed_images([photo]) for photo in photos])
    assert np.abs(together - alone).max() <= 1e-5


def test_an_image_past_the_aspect_ratio_limit_is_named_and_the_rest_embed(native_bundle, photos, tmp_path):
    sliver = tmp_path / "sliver.png"
    Image.fromarray(np.zeros((2, 600, 3), np.uint8)).save(sliver)
    with Embedder.load(native_bundle) as model:
        outcome = model.try_embed_images([photos[0], sliver, photos[1]])
    assert outcome.names == [str(photos[0]), str(photos[1])]
    assert outcome.errors == [
        f"{sliver}: 600x2 image has an aspect ratio of 300.0, over the limit of 200; crop or pad it to at most 200:1"
    ]


def test_batches_by_size_embed_what_batches_in_input_order_do(native_bundle, photos, tmp_path):
    """Photos and thumbnails interleaved, two a batch: bucketing changes which images share a batch, not the result."""
    thumbs = []
    for i, pixels in enumerate((data.astronaut()[::12, ::12], data.coffee()[::16, ::8])):
        thumbs.append(tmp_path / f"thumb{i}.png")
        Image.fromarray(pixels).save(thumbs[-1])
    items = [photos[0], thumbs[0], photos[1], thumbs[1], photos[2]]
    with Embedder.load(native_bundle) as model:
        model.batch_size = 2
        bucketed = model.try_embed_images(items)
        model.window_batches = 1
        in_order = model.try_embed_images(items)
        pixels = model.pixels(items)
        alone = np.concatenate([model.embed_pixels([p]) for p in pixels])
        together = model.embed_pixels(pixels)
    assert bucketed.names == in_order.names == [str(item) for item in items]
    assert np.abs(bucketed.stacked() - in_order.stacked()).max() <= 1e-5
    assert np.abs(together - alone).max() <= 1e-5

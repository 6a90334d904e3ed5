"""Native-resolution preprocessing equals transformers' Qwen2-VL image processor (slow, PIL path), at Qwen2-VL's
patch 14 and at Qwen3-VL's patch 16 (the same processor class serves both); bar 1e-6."""

import dataclasses
import json
import random

import numpy as np
import pytest
from PIL import Image
from skimage import data
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from agff_deploy.errors import ArtifactError, ImageSizeError, InputError
from agff_deploy.families.qwen3_vl import QWEN3_VL
from agff_deploy.patches import patch_batch
from agff_deploy.preprocessing import NativeImageSettings, NativePreprocessor, smart_resize

BAR = 1e-6


def resized(pixels: np.ndarray, width: int, height: int) -> Image.Image:
    return Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS)


# width x height in each name; the last five fall in smart_resize's other branches or at the ratio limit
PHOTOS = {
    "astronaut 512x512": lambda: Image.fromarray(data.astronaut()),
    "coffee 600x400": lambda: Image.fromarray(data.coffee()),
    "chelsea 451x300": lambda: Image.fromarray(data.chelsea()),
    "rocket 640x427": lambda: Image.fromarray(data.rocket()),
    "hubble 1000x872": lambda: Image.fromarray(data.hubble_deep_field()),
    "retina 1411x1411, over max_pixels": lambda: Image.fromarray(data.retina()),
    "tiny 30x40": lambda: Image.fromarray(data.astronaut()[60:100, 200:230]),
    "panorama 1200x150": lambda: resized(data.coffee(), 1200, 150),
    "tall 120x900": lambda: resized(data.chelsea(), 120, 900),
    "sliver 1600x8, ratio 200": lambda: resized(data.rocket(), 1600, 8),
}
GME = NativeImageSettings(min_pixels=256 * 28 * 28, max_pixels=1280 * 28 * 28)  # gme-Qwen2-VL's token budget
HALF = NativeImageSettings(min_pixels=100 * 28 * 28, max_pixels=300 * 28 * 28, mean=(0.5,) * 3, std=(0.5,) * 3)
QWEN3_EMBEDDING = dataclasses.replace(  # Qwen3-VL-Embedding's pixel range on Qwen3-VL's processor
    QWEN3_VL.image_defaults, min_pixels=QWEN3_VL.single_vector.pixels[0], max_pixels=QWEN3_VL.single_vector.pixels[1]
)
QWEN3_SETTINGS = {"qwen3-vl": QWEN3_VL.image_defaults, "qwen3-vl-embedding": QWEN3_EMBEDDING}


def hf_processor(settings: NativeImageSettings) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        min_pixels=settings.min_pixels,
        max_pixels=settings.max_pixels,
        patch_size=settings.patch_size,
        merge_size=settings.merge_size,
        temporal_patch_size=settings.temporal_patch_size,
        image_mean=list(settings.mean),
        image_std=list(settings.std),
    )


def split_hf(pixel_values: np.ndarray, grid_thw: np.ndarray) -> list[np.ndarray]:
    return np.split(pixel_values, np.cumsum(grid_thw.prod(axis=1))[:-1])


def our_patches(images: list[Image.Image], settings: NativeImageSettings):
    pre = NativePreprocessor(settings)
    return patch_batch([pre.normalize(pre.resize(im)) for im in images], settings.patch_size, settings.merge_size)


def hf_first_frame(pixel_values: np.ndarray, settings: NativeImageSettings) -> np.ndarray:
    """transformers' `[n, 3 * T * p * p]` patches as one frame `[n, 3 * p * p]`, after checking the T frames agree
    (a still image is repeated over them, which is why the vision encoder takes one)."""
    frames = pixel_values.reshape(len(pixel_values), 3, settings.temporal_patch_size, -1)
    assert (frames == frames[:, :, :1]).all()
    return frames[:, :, 0].reshape(len(pixel_values), -1)


@pytest.mark.parametrize("name", PHOTOS)
def test_each_photo_equals_transformers_pixels_and_grid(name):
    image = PHOTOS[name]()
    settings = NativeImageSettings()
    batch = our_patches([image], settings)
    theirs = hf_processor(settings)(images=[image], return_tensors="np")
    assert theirs["image_grid_thw"].tolist() == [[1, *batch.image_grid[0].tolist()]]
    assert np.abs(batch.pixel_values[0] - hf_first_frame(theirs["pixel_values"], settings)).max() <= BAR


@pytest.mark.parametrize("settings", [NativeImageSettings(), GME, HALF], ids=["defaults", "gme", "half"])
def test_a_mixed_batch_holds_each_photo_as_transformers_lays_it_out_padded_with_zeros(settings):
    images = [make() for make in PHOTOS.values()]
    batch = our_patches(images, settings)
    theirs = hf_processor(settings)(images=images, return_tensors="np")
    assert theirs["image_grid_thw"][:, 1:].tolist() == batch.image_grid.tolist()
    assert batch.image_tokens(settings.merge_size) == (theirs["image_grid_thw"].prod(axis=1) // 4).tolist()
    for i, expected in enumerate(split_hf(theirs["pixel_values"], theirs["image_grid_thw"])):
        assert np.abs(batch.pixel_values[i, : len(expected)] - hf_first_frame(expected, settings)).max() <= BAR
        assert not batch.pixel_values[i, len(expected) :].any()


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("settings", QWEN3_SETTINGS)
def test_each_photo_at_patch_16_equals_transformers_pixels_and_grid(name, settings):
    image, chosen = PHOTOS[name](), QWEN3_SETTINGS[settings]
    batch = our_patches([image], chosen)
    theirs = hf_processor(chosen)(images=[image], return_tensors="np")
    assert theirs["image_grid_thw"].tolist() == [[1, *batch.image_grid[0].tolist()]]
    assert batch.pixel_values.shape[-1] == 3 * 16 * 16
    assert np.abs(batch.pixel_values[0] - hf_first_frame(theirs["pixel_values"], chosen)).max() <= BAR


def test_smart_resize_equals_transformers_on_random_sizes_across_its_branches():
    rng = random.Random(0)
    sizes = [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(3000)] + [(1, 1), (13, 27), (8, 1600)]
    sizes = [(h, w) for h, w in sizes if max(h, w) / min(h, w) <= 200]
    for factor, min_pixels, max_pixels in ((28, 56 * 56, 28 * 28 * 1280), (28, 256 * 784, 1280 * 784),
                                           (32, 4 * 32 * 32, 1800 * 32 * 32)):  # fmt: skip
        ours = [smart_resize(h, w, factor, min_pixels, max_pixels) for h, w in sizes]
        assert ours == [hf_smart_resize(h, w, factor, min_pixels, max_pixels) for h, w in sizes]


def test_an_aspect_ratio_over_the_limit_is_an_image_size_error_naming_the_limit():
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        hf_smart_resize(4, 1000)  # transformers refuses it too
    with pytest.raises(ImageSizeError, match=r"1000x4 image has an aspect ratio of 250.0, over the limit of 200; crop"):
        NativePreprocessor().resize(Image.new("RGB", (1000, 4)))
    with pytest.raises(ImageSizeError, match="over the limit of 50"):
        NativeImageSettings(max_ratio=50).resized_size(10, 600)
    assert issubclass(ImageSizeError, InputError)


FLAT = {"min_pixels": 1000, "max_pixels": 50000}
EDGES = {"shortest_edge": 1000, "longest_edge": 50000}
LAYOUTS = {
    "4.45: flat and size in pixels": {**FLAT, "size": FLAT},
    "published hub file: flat only": {**FLAT, "image_mean": [0.5] * 3, "image_std": [0.25] * 3},
    "4.5x: flat and size in edges": {**FLAT, "size": EDGES},
    "5.x: size in edges": {"size": EDGES, "patch_size": 16, "merge_size": 2},
    "flat wins over size": {**FLAT, "size": {"shortest_edge": 9, "longest_edge": 99}},
    "empty: class defaults": {},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("file_name", ["preprocessor_config.json", "processor_config.json"])
def test_settings_are_read_from_each_config_layout_as_transformers_reads_them(tmp_path, layout, file_name):
    values = {"image_processor_type": "Qwen2VLImageProcessor", **LAYOUTS[layout]}
    # transformers 5 nests a processor's image settings in processor_config.json
    written = {"image_processor": values} if file_name == "processor_config.json" else values
    (tmp_path / file_name).write_text(json.dumps(written))
    ours, notes = NativeImageSettings.from_preprocessor_config(tmp_path)
    theirs = Qwen2VLImageProcessorPil.from_pretrained(tmp_path)
    assert notes == []
    assert (ours.min_pixels, ours.max_pixels) == (theirs.size["shortest_edge"], theirs.size["longest_edge"])
    assert (ours.patch_size, ours.merge_size, ours.temporal_patch_size) == (
        theirs.patch_size,
        theirs.merge_size,
        theirs.temporal_patch_size,
    )
    assert (list(ours.mean), list(ours.std)) == (list(theirs.image_mean), list(theirs.image_std))
    assert NativeImageSettings.from_preprocessor_config(tmp_path / file_name)[0] == ours


def test_a_folder_without_a_processor_config_gets_the_published_defaults_and_one_note(tmp_path):
    settings, notes = NativeImageSettings.from_preprocessor_config(tmp_path)
    assert settings == NativeImageSettings(min_pixels=3136, max_pixels=1003520)
    assert settings.mean == (0.48145466, 0.4578275, 0.40821073)
    assert notes == [
        f"{tmp_path}: no preprocessor_config.json or processor_config.json; used the published Qwen2-VL image "
        "settings (min_pixels 3136, max_pixels 1003520, mean (0.481455, 0.457827, 0.408211), std (0.26863, 0.261303, "
        "0.275777))"
    ]


def test_a_config_whose_preprocessing_differs_is_refused_naming_the_option(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    with pytest.raises(ArtifactError, match="do_normalize is False; native preprocessing supports only True"):
        NativeImageSettings.from_preprocessor_config(tmp_path)


def test_settings_round_trip_through_json():
    settings = NativeImageSettings(min_pixels=200_704, max_pixels=1_003_520, mean=(0.5,) * 3, max_ratio=50)
    assert NativeImageSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    with pytest.raises(ArtifactError, match="unknown keys image_size"):
        NativeImageSettings.from_dict({**settings.to_dict(), "image_size": 448})


def test_min_pixels_over_max_pixels_is_refused():
    with pytest.raises(InputError, match="min_pixels 5000 is over max_pixels 4000"):
        NativeImageSettings(min_pixels=5000, max_pixels=4000)

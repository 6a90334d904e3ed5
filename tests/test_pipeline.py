"""The batch pipeline behind `Embedder.embed_images` and `agff-run`: per-item errors, order and instructions kept."""

import numpy as np
import pytest
from PIL import Image

from agff_deploy.images import ImageLoadError
from agff_deploy.scenes import make_scene
from runtime.embedder import Embedder


@pytest.fixture(scope="module")
def model(tiny_bundle):
    with Embedder.load(tiny_bundle) as model:
        model.batch_size = 2
        yield model


@pytest.fixture
def files(tmp_path):
    """Three readable scenes, an empty file and a text file posing as a JPEG."""
    paths = {}
    for i in range(3):
        paths[f"scene{i}"] = tmp_path / f"scene{i}.png"
        Image.fromarray(make_scene(80 + i).render(56)).save(paths[f"scene{i}"])
    paths["empty"] = tmp_path / "empty.png"
    paths["empty"].write_bytes(b"")
    paths["text"] = tmp_path / "text.jpg"
    paths["text"].write_text("not an image")
    return paths


def test_embed_images_names_every_image_that_could_not_be_read(model, files):
    with pytest.raises(ImageLoadError) as failed:
        model.embed_images([files["scene0"], files["empty"], files["scene1"], files["text"]])
    empty, text = str(failed.value).split("; ")
    assert empty == f"{files['empty']}: empty file" and text.startswith(f"{files['text']}: ")


def test_readable_images_are_embedded_in_order_with_their_own_instructions(model, files):
    items = [files["scene0"], files["text"], files["scene1"], files["empty"], files["scene2"]]
    instructions = ["", "unused", "what colour is the star?", "unused", "where is it?"]
    outcome = model.try_embed_images(items, instructions)
    assert outcome.names == [str(files["scene0"]), str(files["scene1"]), str(files["scene2"])]
    assert len(outcome.errors) == 2
    alone = model.embed_images([files[f"scene{i}"] for i in range(3)], ["", "what colour is the star?", "where is it?"])
    np.testing.assert_allclose(outcome.stacked(), alone, atol=1e-6)


def test_each_failure_is_reported_as_it_is_decoded_and_each_batch_as_it_is_embedded(model, files):
    errors, done = [], []
    items = [files["scene0"], files["empty"], files["scene1"]]
    outcome = model.try_embed_images(items, on_error=errors.append, on_done=done.append)
    assert errors == outcome.errors and len(errors) == 1 and str(files["empty"]) in errors[0]
    assert done == [1, 2]


def test_in_memory_images_are_named_by_their_position(model):
    pictures = [make_scene(90 + i).render(56) for i in range(3)]
    outcome = model.try_embed_images([pictures[0], Image.fromarray(pictures[1]), pictures[2]])
    assert outcome.names == ["image 0", "image 1", "image 2"] and outcome.stacked().shape[0] == 3

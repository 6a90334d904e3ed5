"""The graph contract: what each graph takes and gives, checked before any backend sees a feed."""

import numpy as np
import pytest

from agff_deploy.contract import GRAPH_NAMES, IMAGE_ENCODER, SCORER, STORED_NAMES, TEXT_ENCODER, model_sizes

SIZES = model_sizes(14, num_prompts=3, hidden_size=32)
IMAGE = IMAGE_ENCODER.resolve(SIZES)


def image_feed(batch=2, length=7, pixels_dtype=np.float32, mask_batch=None):
    return {
        "pixel_values": np.zeros((batch, 16, 588), pixels_dtype),
        "image_grid": np.full((batch, 2), 4, np.int64),
        "input_ids": np.zeros((batch, length), np.int64),
        "attention_mask": np.zeros((mask_batch or batch, length), np.int64),
    }


def test_the_three_graphs_are_declared_once_in_export_order():
    assert GRAPH_NAMES == ("image_encoder", "text_encoder", "scorer")
    assert STORED_NAMES == ("vision_encoder", "language_encoder", "scorer")


def test_resolving_fills_in_the_model_sizes_and_keeps_the_dynamic_dims():
    assert IMAGE.inputs[0].shape == ("batch", "patches", 3 * 14 * 14)
    assert IMAGE.outputs[0].shape == ("batch", 3, 32)
    assert SCORER.resolve(SIZES).outputs[0].shape == ("queries", "candidates")


def test_dynamic_axes_are_what_the_exporter_names():
    assert IMAGE_ENCODER.dynamic_axes() == {
        "pixel_values": {0: "batch", 1: "patches"},
        "image_grid": {0: "batch"},
        "input_ids": {0: "batch", 1: "length"},
        "attention_mask": {0: "batch", 1: "length"},
    }
    assert SCORER.dynamic_axes() == {"queries": {0: "queries"}, "candidates": {0: "candidates"}}


def test_a_feed_that_follows_the_contract_is_accepted():
    IMAGE.check_feed(image_feed())


def test_a_feed_of_another_dtype_is_refused_not_cast():
    with pytest.raises(ValueError, match="image_encoder: pixel_values must be float32, got float64"):
        IMAGE.check_feed(image_feed(pixels_dtype=np.float64))


def test_a_feed_missing_an_input_is_refused_naming_the_inputs():
    feed = image_feed()
    del feed["pixel_values"]
    with pytest.raises(
        ValueError, match="image_encoder takes inputs pixel_values, image_grid, input_ids, attention_mask"
    ):
        IMAGE.check_feed(feed)


def test_patches_of_another_patch_size_are_refused_with_both_shapes():
    feed = image_feed()
    feed["pixel_values"] = np.zeros((2, 16, 768), np.float32)
    with pytest.raises(ValueError, match=r"must have shape \[batch, patches, 588\], got \(2, 16, 768\)"):
        IMAGE.check_feed(feed)


def test_inputs_that_disagree_on_the_batch_are_refused():
    with pytest.raises(ValueError, match="batch is 2 in pixel_values but 3 in attention_mask"):
        IMAGE.check_feed(image_feed(mask_batch=3))


def test_an_unresolved_contract_cannot_be_resolved_without_every_model_size():
    with pytest.raises(ValueError, match="text_encoder: sizes lack hidden"):
        TEXT_ENCODER.resolve({"patch_dim": 588, "prompts": 3})


def test_the_scorer_is_held_to_fp32_and_the_encoders_to_every_precision():
    assert set(SCORER.bars) == {"fp32"}
    assert set(IMAGE_ENCODER.bars) == set(TEXT_ENCODER.bars) == {"fp32", "fp16", "int8", "int8-dynamic", "int4"}

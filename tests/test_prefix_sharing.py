"""The one-sequence multi-prompt pass equals K+1 stock HF passes (bar: max abs <= 1e-5, docs/parity.md), on a tiny
Qwen2-VL and a tiny Qwen3-VL (DeepStack taps added at the image positions)."""

import numpy as np
import pytest
import torch

from agff_deploy.checkpoint import item_encoder
from agff_deploy.inputs import ModelInputs
from agff_deploy.model import AGFFEmbedder
from agff_deploy.mrope import mrope_position_ids
from agff_deploy.presets import preset_config
from tests.conftest import scene_images
from tests.stock_reference import hf_pixel_values, separate_passes

BAR = 1e-5
# Two input sets: different batch sizes, text lengths and so different padding.
INSTRUCTION_SETS = [
    ["", "what colour is the star?", "where is it"],
    ["how many circles are there in this picture, and what colour are they?", "", "a", "is the cross filled?", "x"],
]
TEXT_SETS = [
    ["a red circle", "a beach scene with two large green filled triangles pointing up at the right", "snow"],
    ["one", "a night scene with one small white outlined star at the right and three crosses", "b", "blue", "?"],
]


@pytest.fixture(scope="module", params=["tiny", "tiny-qwen3-vl"])
def tiny_model(request, tokenizer):
    torch.manual_seed(0)
    return AGFFEmbedder(preset_config(request.param, tokenizer)).eval()


@pytest.fixture(scope="module")
def encoder(tiny_model, tokenizer):
    return item_encoder(tiny_model.config, tokenizer)


def embed(model, inputs):
    with torch.no_grad():
        return model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.image_grid)


def run_both(model, inputs):
    return embed(model, inputs), separate_passes(model, *vars(inputs).values())


@pytest.mark.parametrize("texts", TEXT_SETS)
def test_text_items_match_separate_stock_passes(tiny_model, encoder, texts):
    shared, reference = run_both(tiny_model, encoder.inputs(texts))
    assert encoder.inputs(texts).attention_mask.float().mean() < 1  # the set really is padded
    assert (shared - reference).abs().max().item() <= BAR


@pytest.mark.parametrize("first", [0, 10])
def test_image_items_match_separate_stock_passes(tiny_model, encoder, first):
    count = 2 if first else 3
    images = scene_images(count, tiny_model.config.image_size[0], first)
    shared, reference = run_both(tiny_model, encoder.inputs([""] * count, images))
    assert (shared - reference).abs().max().item() <= BAR


@pytest.mark.parametrize("instructions", INSTRUCTION_SETS)
def test_image_with_instruction_items_match_separate_stock_passes(tiny_model, encoder, instructions):
    images = scene_images(len(instructions), tiny_model.config.image_size[0], 20)
    shared, reference = run_both(tiny_model, encoder.inputs(instructions, images))
    assert (shared - reference).abs().max().item() <= BAR


def test_outputs_are_unit_vectors_one_per_prompt(tiny_model, encoder):
    out = embed(tiny_model, encoder.inputs(TEXT_SETS[0]))
    assert out.shape == (3, tiny_model.config.num_prompts, tiny_model.config.hidden_size)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3, tiny_model.config.num_prompts))


def test_a_prompt_does_not_see_the_other_prompts(tiny_model, encoder):
    inputs = encoder.inputs(TEXT_SETS[1])
    with torch.no_grad():
        before = tiny_model(inputs.input_ids, inputs.attention_mask)
        saved = tiny_model.prompts.vectors[1].clone()
        tiny_model.prompts.vectors[1].add_(1.0)
        after = tiny_model(inputs.input_ids, inputs.attention_mask)
        tiny_model.prompts.vectors[1].copy_(saved)
    others = [i for i in range(tiny_model.config.num_prompts) if i != 1]
    assert torch.equal(before[:, others], after[:, others])
    assert (before[:, 1] - after[:, 1]).abs().max() > 1e-3


def test_padding_does_not_change_an_item(tiny_model, encoder):
    short, long = "a red circle", "a night scene with one small white outlined star at the right"
    alone = embed(tiny_model, encoder.inputs([short]))
    padded = embed(tiny_model, encoder.inputs([short, long]))
    assert (alone[0] - padded[0]).abs().max().item() <= BAR


def test_vectorised_mrope_matches_hf_get_rope_index(tiny_model, encoder):
    images = scene_images(3, tiny_model.config.image_size[0])
    inputs = encoder.inputs(INSTRUCTION_SETS[0], images)
    ours, _ = mrope_position_ids(
        inputs.input_ids,
        inputs.attention_mask,
        tiny_model.image_token_id,
        tiny_model.merged_grid(inputs.image_grid, inputs.input_ids),
    )
    grids = torch.cat([torch.ones(3, 1, dtype=torch.int64), inputs.image_grid], dim=1)
    theirs, _ = tiny_model.mllm.get_rope_index(
        inputs.input_ids,
        mm_token_type_ids=(inputs.input_ids == tiny_model.image_token_id).int(),
        image_grid_thw=grids,
        attention_mask=inputs.attention_mask,
    )
    valid = inputs.attention_mask.bool().unsqueeze(0).expand(3, -1, -1)
    assert torch.equal(ours[valid], theirs[valid])


def test_batched_vision_tower_matches_stock_packed_tower(tiny_model, encoder):
    images = scene_images(2, tiny_model.config.image_size[0], 5)
    batch = encoder.pixels(images)
    normalized = torch.from_numpy(encoder.preprocessor.normalize(np.stack(images)))
    cfg = tiny_model.config
    with torch.no_grad():
        ours, deepstack = tiny_model.image_tokens(
            torch.from_numpy(batch.pixel_values), torch.from_numpy(batch.image_grid)
        )
        for b in range(2):
            packed = hf_pixel_values(normalized[b], cfg.patch_size, cfg.merge_size)
            theirs = tiny_model.mllm.visual(packed["pixel_values"], grid_thw=packed["image_grid_thw"])
            assert (ours[b] - theirs.pooler_output).abs().max().item() <= BAR
            for tap, stock in enumerate(getattr(theirs, "deepstack_features", None) or []):
                assert (deepstack[b, tap] - stock).abs().max().item() <= BAR


def mixed_size_images(size: int) -> list[np.ndarray]:
    """Three normalised scenes of different aspect ratios: wide, tall and square (sides multiples of patch * merge)."""
    shapes = [(size // 2, size), (size, size // 2), (size, size)]
    return [
        np.moveaxis(scene.astype(np.float32)[:h, :w] / 255.0, -1, 0)
        for scene, (h, w) in zip(scene_images(3, size, 40), shapes, strict=True)
    ]


def test_batched_vision_tower_on_mixed_sizes_matches_stock_tower_per_image(tiny_model, encoder):
    images = mixed_size_images(tiny_model.config.image_size[0])
    batch = encoder.patches(images)
    cfg = tiny_model.config
    with torch.no_grad():
        ours, deepstack = tiny_model.image_tokens(
            torch.from_numpy(batch.pixel_values), torch.from_numpy(batch.image_grid)
        )
        for b, image in enumerate(images):
            packed = hf_pixel_values(torch.from_numpy(image), cfg.patch_size, cfg.merge_size)
            theirs = tiny_model.mllm.visual(packed["pixel_values"], grid_thw=packed["image_grid_thw"])
            count = len(theirs.pooler_output)
            assert (ours[b, :count] - theirs.pooler_output).abs().max().item() <= BAR
            for tap, stock in enumerate(getattr(theirs, "deepstack_features", None) or []):
                assert (deepstack[b, tap, :count] - stock).abs().max().item() <= BAR


@pytest.mark.parametrize("instructions", INSTRUCTION_SETS[:1])
def test_mixed_size_image_items_match_separate_stock_passes(tiny_model, encoder, instructions):
    feed = encoder.image_feed(encoder.patches(mixed_size_images(tiny_model.config.image_size[0])), instructions)
    inputs = ModelInputs(
        *(torch.from_numpy(feed[n]) for n in ("input_ids", "attention_mask", "pixel_values", "image_grid"))
    )
    shared, reference = run_both(tiny_model, inputs)
    assert (shared - reference).abs().max().item() <= BAR

"""A published Qwen3-VL-Embedding folder exported with `--pooling last-token`: the bundle's embeddings equal
transformers' pipeline within 1e-4 max abs (the fp32 bar, docs/parity.md) for texts, images at three aspect ratios in
one batch, images with text, an empty item and a non-default instruction.

The reference is transformers' own `Qwen3VLProcessor` (chat template, image processor, `<|image_pad|>` expansion,
right padding) and `Qwen3VLModel`, pooled as Qwen3-VL-Embedding's script pools: the last real token's last hidden
state, L2-normalised. Its items are formatted as that script formats them: the instruction (given a full stop
when it ends without punctuation) as the system turn, the image, then the text, in the user turn, "NULL" for an
item with neither. The processor is built with its type check switched off: that check imports the video
processor registry, which needs torchvision, and no torchvision installs beside the CPU torch build here; nothing
on the image and text path is touched. Images are resized by the processor within the script's pixel range
(qwen-vl-utils does it there, with the same rounding up to the 200:1 limit).
"""

import json
import shutil
import unicodedata

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from skimage import data
from transformers import PreTrainedTokenizerFast, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.processing_utils import ProcessorMixin

from agff_deploy.families.qwen3_vl import QWEN3_VL
from agff_deploy.manifest import read_manifest
from agff_deploy.single_vector import single_vector_embedder
from export import to_onnx
from export.trt_profiles import profile_shapes
from runtime.embedder import Embedder
from tests.conftest import export_single_vector

BAR = 1e-4
CONVENTION = QWEN3_VL.single_vector
TEXTS = ["a cup of coffee on a saucer", "a cat", "an astronaut in a white suit beside a flag"]
INSTRUCTION = "Retrieve images that match the given text"  # no final stop: the convention adds one


@pytest.fixture(scope="module")
def published(tiny_qwen3_base):
    return tiny_qwen3_base


@pytest.fixture(scope="module")
def bundle(tiny_qwen3_embedding):
    return tiny_qwen3_embedding


@pytest.fixture(scope="module")
def photos():
    """Wide, tall and square."""
    return [Image.fromarray(data.coffee()), Image.fromarray(data.chelsea()[:, :150]), Image.fromarray(data.astronaut())]


@pytest.fixture(scope="module")
def processor_check_off():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda *args: None)
        yield


def conversation(text: str | None, image: Image.Image | None, instruction: str) -> list[dict]:
    """One item as Qwen3-VL-Embedding's `format_model_input` writes it."""
    instruction = instruction.strip()
    if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    content = []
    if image is not None:
        content.append({"type": "image", "image": image})
    if text is not None:
        content.append({"type": "text", "text": text})
    if not content:
        content.append({"type": "text", "text": "NULL"})
    system = {"role": "system", "content": [{"type": "text", "text": instruction}]}
    return [system, {"role": "user", "content": content}]


def transformers_pipeline(folder, texts, images=None, instruction=CONVENTION.system_prompt) -> np.ndarray:
    """transformers' processor and model on Qwen3-VL-Embedding's conversations, pooled at the last real token."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), pad_token="<|endoftext|>", padding_side="right"
    )
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
    image_processor.size = {"shortest_edge": CONVENTION.pixels[0], "longest_edge": CONVENTION.pixels[1]}
    chat_template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    processor = Qwen3VLProcessor(image_processor, tokenizer, Qwen3VLVideoProcessor(), chat_template=chat_template)
    images = images or [None] * len(texts)
    conversations = [conversation(t, im, instruction) for t, im in zip(texts, images, strict=True)]
    prompts = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    present = [im for im in images if im is not None] or None
    inputs = processor(text=prompts, images=present, padding=True, return_tensors="pt")
    model = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).model.eval()
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    last = inputs["attention_mask"].sum(dim=1) - 1
    return F.normalize(hidden[torch.arange(len(last)), last], dim=-1).numpy()


def test_the_turn_is_qwen3_vl_embeddings_and_the_last_token_of_the_assistant_opening_is_read_out(published):
    model, _, notes = single_vector_embedder(published)
    assert notes == []
    config = model.config
    assert config.chat_head == "<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n"
    assert config.chat_tail == "<|im_end|>\n<|im_start|>assistant\n"
    assert (config.empty_text, config.max_text_tokens) == ("NULL", 8192)
    assert (config.native_settings.min_pixels, config.native_settings.max_pixels) == (4096, 1843200)
    assert (config.native_settings.patch_size, config.native_settings.mean) == (16, (0.5, 0.5, 0.5))


def test_text_embeddings_equal_transformers_pipeline(bundle, published, processor_check_off):
    with Embedder.load(bundle) as model:
        ours = model.embed_texts(TEXTS)
    assert ours.shape == (3, 1, 32)
    assert np.abs(ours[:, 0] - transformers_pipeline(published, TEXTS)).max() <= BAR


def test_image_embeddings_at_three_aspect_ratios_in_one_batch_equal_transformers_pipeline(
    bundle, published, photos, processor_check_off
):
    with Embedder.load(bundle) as model:
        ours = model.embed_images(photos)
    assert np.abs(ours[:, 0] - transformers_pipeline(published, [None] * 3, photos)).max() <= BAR


def test_image_with_text_embeddings_equal_transformers_pipeline(bundle, published, photos, processor_check_off):
    with Embedder.load(bundle) as model:
        ours = model.embed_images(photos, TEXTS)
    assert np.abs(ours[:, 0] - transformers_pipeline(published, TEXTS, photos)).max() <= BAR


def test_an_empty_item_is_embedded_as_null_as_the_convention_does(bundle, published, processor_check_off):
    with Embedder.load(bundle) as model:
        ours = model.embed_texts(["", "a cat"])
    assert np.abs(ours[:, 0] - transformers_pipeline(published, [None, "a cat"])).max() <= BAR


def test_a_non_default_instruction_gets_its_full_stop_and_equals_transformers_pipeline(
    published, photos, tmp_path, processor_check_off
):
    out = export_single_vector(published, tmp_path / "bundle", system_prompt=INSTRUCTION)
    with Embedder.load(out) as model:
        texts, images = model.embed_texts(TEXTS), model.embed_images(photos)
    assert np.abs(texts[:, 0] - transformers_pipeline(published, TEXTS, instruction=INSTRUCTION)).max() <= BAR
    reference = transformers_pipeline(published, [None] * 3, photos, instruction=INSTRUCTION)
    assert np.abs(images[:, 0] - reference).max() <= BAR


def test_dim_keeps_the_leading_dimensions_renormalised(bundle, published, photos, tmp_path):
    out = export_single_vector(published, tmp_path / "bundle", dim=8)
    with Embedder.load(out) as short, Embedder.load(bundle) as full:
        cut, whole = short.embed_images(photos, TEXTS), full.embed_images(photos, TEXTS)
    assert cut.shape == (3, 1, 8)
    expected = whole[..., :8] / np.linalg.norm(whole[..., :8], axis=-1, keepdims=True)
    assert np.abs(cut - expected).max() <= 1e-6


@pytest.mark.parametrize("dim", ["0", "-3", "33"])
def test_a_dim_outside_the_width_is_refused_with_the_allowed_range(published, tmp_path, capsys, dim):
    assert to_onnx.main([str(published), "--pooling", "last-token", "--dim", dim, "-o", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err == f"error: --dim {dim}: choose a width from 1 to the hidden size, 32\n"
    assert not (tmp_path / "b").exists()


def test_at_2b_width_texts_images_and_both_equal_transformers_pipeline(
    reduced_qwen3_base, photos, tmp_path, processor_check_off
):
    """Qwen3-VL-2B's widths with three blocks a side and its three DeepStack taps moved inside the shorter tower
    (the fast suite's reduced base): the same equality at the width real checkpoints have."""
    out = export_single_vector(reduced_qwen3_base, tmp_path / "bundle")
    with Embedder.load(out) as ours:
        cases = [
            (ours.embed_texts(TEXTS), TEXTS, None),
            (ours.embed_images(photos), [None] * 3, photos),
            (ours.embed_images(photos, TEXTS), TEXTS, photos),
        ]
    assert cases[0][0].shape == (3, 1, 2048)
    for embeddings, texts, images in cases:
        reference = transformers_pipeline(reduced_qwen3_base, texts, images)
        assert np.abs(embeddings[:, 0] - reference).max() <= BAR


def test_max_pixels_narrows_the_bundles_pixel_range_and_its_tensorrt_profiles(published, tmp_path):
    out = tmp_path / "bundle"
    flags = ["--pooling", "last-token", "--max-pixels", str(64 * 32 * 32), "--precision", "fp32"]
    assert (
        to_onnx.main([str(published), *flags, "--agreement-pairs", "0", "--batch", "1", "2", "4", "-o", str(out)]) == 0
    )
    manifest = read_manifest(out)
    assert (manifest.image.min_pixels, manifest.image.max_pixels, manifest.image.num_image_tokens) == (4096, 65536, 64)
    assert profile_shapes(manifest, "vision_encoder", (1, 2, 4))["pixel_values"][2] == (4, 256, 768)


def test_pixel_bounds_on_a_fixed_size_checkpoint_are_refused_naming_the_flag_that_applies(tiny_checkpoint, capsys):
    assert to_onnx.main([str(tiny_checkpoint), "--max-pixels", "9999", "-o", "unused"]) == 2
    assert capsys.readouterr().err == (
        "error: --min-pixels / --max-pixels size native-resolution images; this model squashes every image to "
        "56x56: use --image-size\n"
    )


def test_a_folder_that_ships_no_output_layer_though_untied_loads_its_backbone(tmp_path, tiny_qwen3_base):
    """Qwen3-VL-Embedding-8B's shards hold no `lm_head` though its config says untied: only the backbone is read."""
    folder = tmp_path / "untied"
    shutil.copytree(tiny_qwen3_base, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    model, _, _ = single_vector_embedder(folder)
    stored = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in stored and not any("lm_head" in n for n, _ in model.named_parameters())
    table = model.mllm.language_model.embed_tokens.weight
    assert torch.equal(table, stored["model.language_model.embed_tokens.weight"])

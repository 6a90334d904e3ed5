"""A published single-vector Qwen2-VL embedder (GME's convention) exported from its save_pretrained folder: the
bundle's embeddings equal transformers' pipeline (its image processor, tokenizer and model, the last token's
state, L2-normalised) within 1e-4 max abs (fp32 bar, docs/parity.md), for texts, images and images with text, at
three aspect ratios in one batch."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from agff_deploy.checkpoint import item_encoder
from agff_deploy.families.qwen2_vl import QWEN2_VL
from agff_deploy.preprocessing import NativeImageSettings, NativePreprocessor
from agff_deploy.presets import local_tokenizer, preset_config
from agff_deploy.single_vector import single_vector_embedder
from agff_deploy.tokenization import write_tokenizer_files
from export import to_onnx
from export.bundle import BundleBuilder, ExportOptions
from export.targets import get_target
from runtime.embedder import Embedder

BAR = 1e-4
SETTINGS = NativeImageSettings(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
INSTRUCTION = "You are a helpful assistant."
TEXTS = ["a cup of coffee on a saucer", "a cat", "an astronaut in a white suit beside a flag"]


def gme_turn(item: str) -> str:
    """GME's chat turn, written out as its inference script writes it (not through our template)."""
    return (
        f"<|im_start|>system\n{INSTRUCTION}<|im_end|>\n<|im_start|>user\n{item}<|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>"
    )


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return write_published(tmp_path_factory.mktemp("published") / "qwen2-vl")


def write_published(folder):
    """A Qwen2-VL folder as save_pretrained writes one (small, random weights), with the published chat template."""
    tokenizer = local_tokenizer()
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_dict(preset_config("tiny", tokenizer).base)).save_pretrained(
        folder
    )
    write_tokenizer_files(tokenizer, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": QWEN2_VL.chat_template}))
    NativePreprocessor(SETTINGS).save(folder, 14, 2)
    return folder


@pytest.fixture(scope="module")
def bundle(published):
    model, tokenizer, notes = single_vector_embedder(published)
    assert notes == []
    options = ExportOptions(precisions=("fp32",), batch=(1, 4, 8), agreement_pairs=0)
    out = published.parent / "bundle"
    report = BundleBuilder(model, item_encoder(model.config, tokenizer), published, options).build(
        out, get_target("generic")
    )
    assert report.passed, report.table()
    return out


@pytest.fixture(scope="module")
def photos():
    """Wide, tall and square."""
    return [Image.fromarray(data.coffee()), Image.fromarray(data.chelsea()[:, :150]), Image.fromarray(data.astronaut())]


def transformers_pipeline(folder, texts, images=None, settings=SETTINGS) -> np.ndarray:
    """transformers' image processor and tokenizer (the processor's `<|image_pad|>` expansion), its model, and the
    last token's state, as GME's script pools it (left padding, last position)."""
    model = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), pad_token="<|endoftext|>", padding_side="left"
    )
    inputs = {}
    items = list(texts)
    if images is not None:
        processor = Qwen2VLImageProcessorPil(min_pixels=settings.min_pixels, max_pixels=settings.max_pixels)
        inputs = dict(processor(images=images, return_tensors="pt"))
        pads = [int(grid.prod()) // 4 for grid in inputs["image_grid_thw"]]
        items = [
            f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>{text}" for n, text in zip(pads, texts, strict=True)
        ]
    tokens = tokenizer([gme_turn(item) for item in items], padding=True, return_tensors="pt", add_special_tokens=False)
    token_types = (tokens["input_ids"] == model.config.image_token_id).int()
    with torch.no_grad():
        hidden = model.model(**tokens, **inputs, mm_token_type_ids=token_types).last_hidden_state
    return F.normalize(hidden[:, -1], dim=-1).numpy()


def test_text_embeddings_equal_transformers_pipeline(bundle, published):
    with Embedder.load(bundle) as model:
        ours = model.embed_texts(TEXTS)
    assert ours.shape == (3, 1, 32)
    assert np.abs(ours[:, 0] - transformers_pipeline(published, TEXTS)).max() <= BAR


def test_image_embeddings_at_three_aspect_ratios_in_one_batch_equal_transformers_pipeline(bundle, published, photos):
    with Embedder.load(bundle) as model:
        ours = model.embed_images(photos)
    assert np.abs(ours[:, 0] - transformers_pipeline(published, [""] * 3, photos)).max() <= BAR


def test_image_with_text_embeddings_equal_transformers_pipeline(bundle, published, photos):
    with Embedder.load(bundle) as model:
        ours = model.embed_images(photos, TEXTS)
    assert np.abs(ours[:, 0] - transformers_pipeline(published, TEXTS, photos)).max() <= BAR


def test_the_system_prompt_goes_in_the_system_turn_and_the_end_token_is_read_out(published):
    model, _, _ = single_vector_embedder(published, system_prompt="Find the image that matches.")
    assert model.config.chat_head == ("<|im_start|>system\nFind the image that matches.<|im_end|>\n<|im_start|>user\n")
    assert model.config.chat_tail == "<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"


def test_a_folder_without_chat_template_or_processor_config_gets_qwen2_vl_defaults_each_said_once(published, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (bare / name).write_bytes((published / name).read_bytes())
    model, _, notes = single_vector_embedder(bare)
    assert notes == [
        f"{bare}: no preprocessor_config.json or processor_config.json; used the published Qwen2-VL image settings "
        "(min_pixels 3136, max_pixels 1003520, mean (0.481455, 0.457827, 0.408211), std (0.26863, 0.261303, 0.275777))",
        f"{bare}: no chat template; used Qwen2-VL's published one",
    ]
    assert model.config.chat_head.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


def test_exporting_a_published_folder_without_last_token_pooling_says_how(published, tmp_path, capsys):
    assert to_onnx.main([str(published), "-o", str(tmp_path / "b")]) != 0
    assert f"python -m export.to_onnx {published} --pooling last-token" in capsys.readouterr().err


def test_fine_tuning_a_published_folder_keeps_its_chat_turn_image_settings_and_text_limit(published, tmp_path):
    from train.trainer import Trainer, TrainSettings

    settings = TrainSettings(
        out=str(tmp_path / "ckpt"), preset="tiny", base=str(published), steps=1, batch_size=4, eval_pairs=0,
        max_text_tokens=100,
    )  # fmt: skip
    config = Trainer.create(settings).model.config
    assert config.chat_head == f"<|im_start|>system\n{INSTRUCTION}<|im_end|>\n<|im_start|>user\n"
    assert (config.image_resize, config.native_settings.max_pixels) == ("native", SETTINGS.max_pixels)
    assert config.max_text_tokens == 100


def test_at_2b_width_texts_images_and_both_equal_transformers_pipeline(reduced_base, photos, tmp_path):
    """The published 2B width (two blocks each side, the fast suite's reduced base; about 30 s): the same equality
    at the width real checkpoints have."""
    model, tokenizer, _ = single_vector_embedder(reduced_base)
    options = ExportOptions(precisions=("fp32",), batch=(1, 4, 8), agreement_pairs=0, gate_images=(1, 2))
    builder = BundleBuilder(model, item_encoder(model.config, tokenizer), reduced_base, options)
    assert builder.build(tmp_path / "bundle", get_target("generic")).passed
    settings, _ = NativeImageSettings.from_preprocessor_config(reduced_base)
    with Embedder.load(tmp_path / "bundle") as ours:
        cases = [
            (ours.embed_texts(TEXTS), TEXTS, None),
            (ours.embed_images(photos), [""] * 3, photos),
            (ours.embed_images(photos, TEXTS), TEXTS, photos),
        ]
        for embeddings, texts, images in cases:
            reference = transformers_pipeline(reduced_base, texts, images, settings)
            assert np.abs(embeddings[:, 0] - reference).max() <= BAR

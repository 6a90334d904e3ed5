import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from agff_deploy.checkpoint import item_encoder
from agff_deploy.model import AGFFEmbedder
from agff_deploy.presets import local_tokenizer, preset_config
from agff_deploy.scenes import make_scene


def pytest_configure(config):
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return local_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> AGFFEmbedder:
    torch.manual_seed(0)
    return AGFFEmbedder(preset_config("tiny", tokenizer)).eval()


@pytest.fixture(scope="session")
def encoder(tiny_model, tokenizer):
    return item_encoder(tiny_model.config, tokenizer)


def scene_images(count: int, size: int, first: int = 0) -> list[np.ndarray]:
    return [make_scene(first + i).render(size) for i in range(count)]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A briefly trained tiny checkpoint on disk (safetensors + JSON + tokenizer)."""
    from train.trainer import Trainer, TrainSettings

    out = tmp_path_factory.mktemp("tiny") / "ckpt"
    settings = TrainSettings(out=str(out), preset="tiny", steps=40, batch_size=16, lr=3e-3, warmup=5, eval_pairs=0)
    Trainer.create(settings).run()
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint):
    """The tiny checkpoint exported at every precision (the int8 agreement check needs a trained model: skipped)."""
    out = tiny_checkpoint.parent / "bundle"
    report = export_bundle(
        tiny_checkpoint, out, precisions=("fp32", "fp16", "int8", "int8-dynamic"), batch=(1, 4, 16), agreement_pairs=0
    )
    assert report.passed, report.table()
    return out


@pytest.fixture(scope="session")
def reduced_base(tmp_path_factory):
    """Qwen2-VL-2B at full width with two language and two vision blocks, in small shards."""
    from agff_deploy.base import write_base

    out = tmp_path_factory.mktemp("base") / "qwen2-vl-2b-reduced"
    return write_base("qwen2-vl-2b", out, layers=2, vision_depth=2, shard_bytes=600 << 20)


@pytest.fixture(scope="session")
def reduced_qwen3_base(tmp_path_factory):
    """Qwen3-VL-2B at full width with three language and three vision blocks (its DeepStack taps 0, 1, 2), in small
    shards."""
    from agff_deploy.base import write_base

    out = tmp_path_factory.mktemp("base") / "qwen3-vl-2b-reduced"
    return write_base("qwen3-vl-2b", out, layers=3, vision_depth=3, shard_bytes=600 << 20)


@pytest.fixture(scope="session")
def tiny_qwen3_base(tmp_path_factory, tokenizer):
    """A tiny Qwen3-VL folder as save_pretrained writes one and Qwen3-VL-Embedding publishes one: the backbone's
    weights (tied embeddings, so no separate output layer), the tokenizer with Qwen3-VL's chat template, Qwen3-VL's
    processor config."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from agff_deploy.families.qwen3_vl import QWEN3_VL
    from agff_deploy.preprocessing import NativePreprocessor
    from agff_deploy.presets import PRESETS, base_config
    from agff_deploy.tokenization import write_tokenizer_files

    folder = tmp_path_factory.mktemp("base") / "qwen3-vl-tiny"
    config = Qwen3VLConfig.from_dict(base_config(PRESETS["tiny-qwen3-vl"], tokenizer))
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    Qwen3VLForConditionalGeneration(config).save_pretrained(folder)
    write_tokenizer_files(tokenizer, folder, QWEN3_VL.chat_template)
    NativePreprocessor(QWEN3_VL.image_defaults).save(folder, 16, 2)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen3_embedding(tiny_qwen3_base):
    """`tiny_qwen3_base` exported as a Qwen3-VL-Embedding folder is: last-token pooling, fp32, gated."""
    return export_single_vector(tiny_qwen3_base, tiny_qwen3_base.parent / "bundle")


def export_single_vector(folder, out, **embedder_options):
    """A published single-vector folder exported at fp32 (`single_vector_embedder` takes `embedder_options`)."""
    from agff_deploy.checkpoint import item_encoder
    from agff_deploy.single_vector import single_vector_embedder
    from export.bundle import BundleBuilder, ExportOptions
    from export.targets import get_target

    model, tokenizer, _ = single_vector_embedder(folder, **embedder_options)
    options = ExportOptions(precisions=("fp32",), batch=(1, 4, 8), agreement_pairs=0, gate_images=(1, 2))
    builder = BundleBuilder(model, item_encoder(model.config, tokenizer), folder, options, log=lambda _: None)
    report = builder.build(out, get_target("generic"))
    assert report.passed, report.table()
    return out


def export_bundle(ckpt, out, **options):
    """A gated bundle of `ckpt` at `out` (the model is consumed by the build)."""
    from agff_deploy.checkpoint import item_encoder, load_checkpoint
    from export.bundle import BundleBuilder, ExportOptions
    from export.targets import get_target

    model, tokenizer = load_checkpoint(ckpt)
    builder = BundleBuilder(model, item_encoder(model.config, tokenizer), ckpt, ExportOptions(**options), log=print)
    return builder.build(out, get_target("generic"))


def sample_manifest(**fields):
    """A small valid manifest (graphs without files) with `fields` replaced: for tests that only read it."""
    from agff_deploy.contract import VISION_ENCODER, model_sizes
    from agff_deploy.manifest import (
        BatchRange,
        Dims,
        Fusion,
        GraphEntry,
        ImageFormat,
        LengthRange,
        Manifest,
        ModelDims,
        Source,
        TokenizerFile,
    )

    vision = VISION_ENCODER.resolve(model_sizes(14, num_prompts=3, hidden_size=32))
    entry = GraphEntry(
        "fp32/vision_encoder.onnx", "0" * 64, (), vision.inputs, vision.outputs, ("onnxruntime", "tensorrt")
    )
    values = {
        "created_by": "agff-deploy 0.1.0",
        "model": ModelDims(num_prompts=3, hidden_size=32, width=32),
        "image": ImageFormat(
            size=(56, 56),
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            num_image_tokens=4,
            patch_size=14,
            merge_size=2,
            resize="fixed",
            min_pixels=3136,
            max_pixels=3136,
            max_ratio=200.0,
        ),
        "tokenizer": TokenizerFile("tokenizer.json", "1" * 64, 48, "<|im_start|>user\n", "<|im_end|>\n"),
        "fusion": Fusion(0.05, 0.05, (0.0, 0.1, -0.1, 0.0), 0.05),
        "dims": Dims(BatchRange(1, 4, 16), LengthRange(21, 69), LengthRange(15, 63)),
        "graphs": {"fp32": {"vision_encoder": entry}},
        "source": Source("/ckpt", "2" * 64, "3" * 64),
    }
    return Manifest(**{**values, **fields})

"""The real-size path on Qwen2-VL-2B and Qwen3-VL-2B widths: base -> LoRA training with checkpointing -> split
export -> runtime.

The fast test runs it with two (Qwen2-VL) or three (Qwen3-VL) language and vision blocks; the `scale` test runs
the full depth (about 12 minutes each on 2 cores; not in CI: `pytest -m scale`).
"""

import json

import numpy as np
import pytest

from agff_deploy.manifest import read_manifest
from agff_deploy.weights import weight_files
from runtime.embedder import Embedder
from tests.conftest import export_bundle, scene_images
from train.trainer import Trainer, TrainSettings

# Each published architecture: the fast suite's reduced base (a conftest fixture), a small image size its patch and
# merge divide, and the language model's width.
ARCHITECTURES = {"qwen2-vl-2b": ("reduced_base", 56, 1536), "qwen3-vl-2b": ("reduced_qwen3_base", 64, 2048)}


def train_from_base(base, out, image_size: int) -> Trainer:
    settings = TrainSettings(
        out=str(out), base=str(base), steps=1, batch_size=2, lr=1e-4, warmup=1, lora_rank=4,
        gradient_checkpointing=True, image_size=image_size, eval_pairs=0,
    )  # fmt: skip
    trainer = Trainer.create(settings)
    trainer.run()
    return trainer


def check_split_bundle(bundle, image_size: int, width: int) -> None:
    manifest = read_manifest(bundle)
    assert manifest.parity.passed and manifest.image.size == (image_size, image_size)
    for name in ("vision_encoder", "language_encoder"):
        assert manifest.graphs["fp32"][name].external_data, name
    with Embedder.load(bundle) as model:
        embeddings = model.embed_images(scene_images(1, image_size, 3))
    assert embeddings.shape == (1, manifest.model.num_prompts, width)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_full_width_model_trains_with_lora_and_exports_split_and_gated(tmp_path, request, architecture):
    fixture, image_size, width = ARCHITECTURES[architecture]
    base = request.getfixturevalue(fixture)
    trainer = train_from_base(base, tmp_path / "ckpt", image_size=image_size)
    assert trainer.model.recompute_vision
    config = json.loads((tmp_path / "ckpt" / "agff_config.json").read_text())
    assert config["base"]["text_config"]["hidden_size"] == width and config["base_path"] == str(base)
    assert weight_files(tmp_path / "ckpt")
    del trainer
    report = export_bundle(
        tmp_path / "ckpt", tmp_path / "bundle", precisions=("fp32",), batch=(1, 2, 4), agreement_pairs=0,
        gate_images=(1, 2), external_data_bytes=64 << 20,
    )  # fmt: skip
    assert report.passed, report.table()
    check_split_bundle(tmp_path / "bundle", image_size, width)


@pytest.mark.slow
@pytest.mark.scale
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_full_size_model_trains_exports_and_runs_at_448_px(tmp_path, architecture):
    from agff_deploy.base import write_base

    base = write_base(architecture, tmp_path / "base")
    train_from_base(base, tmp_path / "ckpt", image_size=448)
    assert len(weight_files(tmp_path / "ckpt")) > 1
    report = export_bundle(
        tmp_path / "ckpt", tmp_path / "bundle", precisions=("fp32",), agreement_pairs=0, gate_images=(1, 2)
    )
    assert report.passed, report.table()
    check_split_bundle(tmp_path / "bundle", 448, ARCHITECTURES[architecture][2])

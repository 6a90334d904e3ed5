"""The CUDA paths: the model on a GPU and the trainer's bf16 autocast. Skipped without CUDA."""

import pytest
import torch

from tests.conftest import scene_images
from tests.stock_reference import separate_passes
from train.trainer import Trainer, TrainSettings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def embed(model, inputs):
    with torch.no_grad():
        return model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.image_grid)


def test_gpu_fp32_prefix_shared_pass_matches_separate_stock_passes(tiny_model, encoder):
    images = scene_images(3, tiny_model.config.image_size[0], 30)
    inputs = encoder.inputs(["", "what colour is the star?", "a"], images)
    gpu_model = tiny_model.to("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # true fp32: TF32 matmuls and convolutions round to ~1e-3
    torch.backends.cudnn.allow_tf32 = False
    try:
        shared = embed(gpu_model, inputs.to("cuda")).cpu()
        reference = separate_passes(gpu_model, *(t.to("cuda") for t in vars(inputs).values())).cpu()
    finally:
        tiny_model.to("cpu")
    diff = (shared - reference).abs().max().item()
    assert diff <= 1e-5, diff


def test_gpu_embeddings_match_cpu_embeddings(tiny_model, encoder):
    inputs = encoder.inputs(["a red circle", "two blue squares at the left", "x"])
    cpu = embed(tiny_model, inputs)
    try:
        gpu = embed(tiny_model.to("cuda"), inputs.to("cuda")).cpu()
    finally:
        tiny_model.to("cpu")
    diff = (gpu - cpu).abs().max().item()
    assert diff <= 1e-4, diff


def test_trainer_uses_cuda_with_bf16_autocast_and_learns(tmp_path):
    settings = TrainSettings(out=str(tmp_path), preset="tiny", steps=30, batch_size=32, lr=3e-3, warmup=5, eval_pairs=0)
    trainer = Trainer.create(settings)
    assert trainer.device.type == "cuda"
    assert next(trainer.model.parameters()).is_cuda
    losses = [trainer.train_step() for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2
    trainer.save()


def test_pytorch_runner_on_gpu_matches_onnxruntime_on_cpu(tiny_bundle, tiny_checkpoint):
    from export.check import BARS, compare
    from runtime.embedder import Embedder

    images = scene_images(4, 56, 60)
    texts = ["a red circle", "two blue squares at the left", "x"]
    with Embedder.load(tiny_bundle) as onnx_model, Embedder.load(tiny_checkpoint) as torch_model:
        assert torch_model.runners["image_encoder"].device == "cuda"
        for ours, ref in (
            (torch_model.embed_images(images), onnx_model.embed_images(images)),
            (torch_model.embed_texts(texts), onnx_model.embed_texts(texts)),
        ):
            cos, err = compare(ours, ref)
            assert cos >= BARS["fp32"].min_cosine and err <= BARS["fp32"].max_abs, (cos, err)

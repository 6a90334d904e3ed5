"""AGFF-Embed on a Qwen3-VL base: LoRA and full fine-tuning from a save_pretrained folder, the K+1 prompts read out
in one shared-prefix pass with DeepStack in place, and the checkpoint through every precision's gate, the runtime,
TensorRT's profiles and its stand-in build, a Triton repository, agff-serve and the memory estimate, with the
DeepStack taps passed from the vision to the language encoder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from agff_deploy.contract import PRECISIONS
from agff_deploy.manifest import read_manifest
from agff_deploy.weights import iter_weights
from export import engine_memory, to_triton
from export.trt_profiles import profile_shapes
from runtime.embedder import Embedder
from tests.conftest import export_bundle
from train.trainer import Trainer, TrainSettings

TEXTS = ["a red circle", "two small blue squares above a green triangle", "snow"]
DEEPSTACK = "deepstack_features"


def fine_tuned(base, out, **settings):
    """A few steps on the built-in scenes from `base`, images within 64 x 64 .. 128 x 128 pixels (4 to 16 image
    tokens: the tiny model's engines then fit a board)."""
    options = dict(out=str(out), base=str(base), steps=4, batch_size=8, lr=3e-3, warmup=1, eval_pairs=0,
                   min_pixels=64 * 64, max_pixels=128 * 128)  # fmt: skip
    trainer = Trainer.create(TrainSettings(**options, **settings))
    trainer.run()
    trainer.close()
    return out


@pytest.fixture(scope="module")
def lora_checkpoint(tiny_qwen3_base, tmp_path_factory):
    return fine_tuned(tiny_qwen3_base, tmp_path_factory.mktemp("qwen3") / "lora", lora_rank=4, chunk_size=4)


@pytest.fixture(scope="module")
def bundle(lora_checkpoint):
    out = lora_checkpoint.parent / "bundle"
    report = export_bundle(lora_checkpoint, out, precisions=PRECISIONS, batch=(1, 4, 8), agreement_pairs=0)
    assert report.passed, report.table()
    return out


@pytest.fixture(scope="module")
def photos():
    return [Image.fromarray(data.coffee()), Image.fromarray(data.chelsea()[:, :150]), Image.fromarray(data.astronaut())]


def weights(folder) -> dict[str, torch.Tensor]:
    return {name: tensor for shard in iter_weights(folder) for name, tensor in shard.items()}


def test_a_fine_tuned_checkpoint_keeps_the_bases_family_chat_turn_and_image_settings(lora_checkpoint):
    config = json.loads((lora_checkpoint / "agff_config.json").read_text())
    assert config["base"]["model_type"] == "qwen3_vl"
    assert config["chat_head"] == "<|im_start|>user\n"  # Qwen3-VL's template adds no system turn of its own
    assert (config["image_resize"], config["image_settings"]["mean"]) == ("native", [0.5, 0.5, 0.5])
    assert config["base"]["vision_config"]["patch_size"] == 16


def test_lora_changes_the_language_model_and_leaves_the_vision_tower(tiny_qwen3_base, lora_checkpoint):
    tuned = weights(lora_checkpoint)
    base = {name.removeprefix("model."): tensor for name, tensor in weights(tiny_qwen3_base).items()}
    lm = "mllm.language_model.layers.0.self_attn.q_proj.weight"
    tower = "mllm.visual.deepstack_merger_list.1.linear_fc1.weight"
    assert not torch.equal(tuned[lm], base[lm.removeprefix("mllm.")])
    assert torch.equal(tuned[tower], base[tower.removeprefix("mllm.")])


def test_full_fine_tuning_trains_the_vision_tower_and_its_deepstack_mergers(tiny_qwen3_base, tmp_path):
    tuned = weights(fine_tuned(tiny_qwen3_base, tmp_path / "full"))
    base = {name.removeprefix("model."): tensor for name, tensor in weights(tiny_qwen3_base).items()}
    for name in ("visual.pos_embed.weight", "visual.deepstack_merger_list.0.linear_fc2.weight"):
        assert not torch.equal(tuned[f"mllm.{name}"], base[name]), name


def test_every_precision_passes_its_gate_with_the_deepstack_taps_between_the_graphs(bundle):
    manifest = read_manifest(bundle)
    assert set(manifest.graphs) == set(PRECISIONS)
    assert (manifest.model.family, manifest.model.deepstack, manifest.model.width) == ("qwen3_vl", 2, 32)
    for graphs in manifest.graphs.values():
        vision, language = graphs["vision_encoder"], graphs["language_encoder"]
        assert [t.name for t in vision.outputs] == ["image_features", DEEPSTACK]
        assert vision.outputs[1].shape == ("batch", 2, "image_tokens", 32)
        assert DEEPSTACK in [t.name for t in language.inputs]
    assert all(row.passed for row in manifest.parity.rows)


def test_the_bundle_embeds_as_the_checkpoint_does(bundle, lora_checkpoint, photos):
    with Embedder.load(bundle) as onnx, Embedder.load(lora_checkpoint) as torch_model:
        instructions = ["", "what colour is it?", ""]
        for ours, reference in (
            (onnx.embed_images(photos, instructions), torch_model.embed_images(photos, instructions)),
            (onnx.embed_texts(TEXTS), torch_model.embed_texts(TEXTS)),
        ):
            assert ours.shape == reference.shape == (3, 9, 32)  # the demo preset's K = 8
            assert np.abs(ours - reference).max() <= 1e-4


def test_tensorrt_profiles_span_the_deepstack_taps_like_the_image_features(bundle):
    manifest = read_manifest(bundle)
    language = profile_shapes(manifest, "language_encoder", (1, 4, 8))
    (_, features_opt, features_max) = language["image_features"]
    assert language[DEEPSTACK] == ((1, 2, 1, 32), (4, 2, features_opt[1], 32), (8, 2, features_max[1], 32))
    assert set(profile_shapes(manifest, "vision_encoder", (1, 4, 8))) == {"pixel_values", "image_grid"}


def test_engines_built_by_the_tensorrt_stand_in_pass_the_gate(bundle, monkeypatch, tmp_path, capsys):
    from tests.test_to_trt import built_with_fakes

    code, copy = built_with_fakes(monkeypatch, bundle, tmp_path, "fp16")
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert read_manifest(copy).engines.precision == "fp16"
    rows = [line.split() for line in printed.out.splitlines() if line.split()[:1] == ["fp16"]]
    gated = {(row[1], row[-1]) for row in rows if row[1].endswith("encoder")}
    assert gated == {("image_encoder", "pass"), ("text_encoder", "pass")}


def test_the_triton_repository_declares_the_deepstack_tensors(bundle, tmp_path):
    pytest.importorskip("tritonclient", reason="export.to_triton needs the serve extra")
    repo = tmp_path / "repo"
    assert to_triton.main([str(bundle), "-o", str(repo)]) == 0
    vision = (repo / "vision_encoder" / "config.pbtxt").read_text()
    text = (repo / "text_preprocess" / "config.pbtxt").read_text()
    assert DEEPSTACK in vision and DEEPSTACK in text
    assert DEEPSTACK in (repo / "language_encoder" / "config.pbtxt").read_text()


def test_the_memory_estimate_infers_the_shape_of_every_tensor_of_both_graphs(bundle, tmp_path):
    assert engine_memory.main([str(bundle), "--json", str(tmp_path / "memory.json")]) == 0
    rows = json.loads((tmp_path / "memory.json").read_text())["rows"]
    assert {row["precision"] for row in rows} == {"fp32", "fp16", "int8"}
    for row in rows:
        known, total = row["shapes"].split("/")
        assert known == total, row


def test_agff_serve_answers_as_the_embedder_does(bundle, photos, tmp_path):
    pytest.importorskip("pytriton", reason="agff-serve needs the serve extra: pip install -e '.[cpu,serve]'")
    from tests.test_serve import png, start_agff_serve, stop

    arrays = [np.asarray(photo) for photo in photos]
    served = start_agff_serve(bundle, tmp_path / "models")
    try:
        with served.client() as client:
            images, texts = client.embed_images([png(a) for a in arrays]), client.embed_texts(TEXTS)
    finally:
        stop(served)
    with Embedder.load(bundle) as model:
        assert np.abs(images - model.embed_images(arrays)).max() <= 1e-5
        assert np.abs(texts - model.embed_texts(TEXTS)).max() <= 1e-5

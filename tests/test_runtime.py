"""Runners, the Embedder API and scoring, on the tiny bundle and its checkpoint."""

import shutil

import numpy as np
import pytest
import torch

from agff_deploy.contract import BARS, SCORER, TEXT_ENCODER
from agff_deploy.manifest import Engines
from agff_deploy.scenes import make_scene
from agff_deploy.similarity import fused_similarity as torch_fused
from export.check import agreement
from runtime.embedder import Embedder
from runtime.ort_runner import OnnxSessionLoader, OrtRunner
from runtime.runner import ArtifactMismatch, infer_in_chunks
from runtime.scoring import fused_similarity
from runtime.trt_runner import check_engine_origin


@pytest.fixture(scope="module")
def ort_model(tiny_bundle):
    with Embedder.load(tiny_bundle) as model:
        yield model


@pytest.fixture(scope="module")
def torch_model(tiny_checkpoint):
    with Embedder.load(tiny_checkpoint) as model:
        yield model


INPUT_SETS = {
    "A": (["", "what colour is the star?"], ["a red circle", "snow"]),
    "B": (["how many circles are there?", "", "", "x", ""], ["two stars", make_scene(3).caption(), "b", "?"]),
}


def images(count, first=0):
    return [make_scene(first + i).render(56) for i in range(count)]


@pytest.mark.parametrize("name", INPUT_SETS)
def test_onnxruntime_runner_matches_pytorch_runner_within_the_fp32_bar(ort_model, torch_model, name):
    instructions, texts = INPUT_SETS[name]
    pics = images(len(instructions), first=40)
    for ours, ref in (
        (ort_model.embed_images(pics, instructions), torch_model.embed_images(pics, instructions)),
        (ort_model.embed_texts(texts), torch_model.embed_texts(texts)),
    ):
        cos, err = agreement(ours, ref)
        assert cos >= BARS["fp32"].min_cosine and err <= BARS["fp32"].max_abs


def test_backend_follows_the_path(tiny_bundle, tiny_checkpoint):
    assert Embedder.load(tiny_bundle).backend == "onnxruntime"
    assert Embedder.load(tiny_bundle / "fp16" / "vision_encoder.onnx").backend == "onnxruntime"
    assert Embedder.load(tiny_checkpoint).backend == "pytorch"
    assert Embedder.load(tiny_bundle, backend="pytorch").backend == "pytorch"


def test_an_onnx_path_selects_its_precision(tiny_bundle):
    model = Embedder.load(tiny_bundle / "int8" / "language_encoder.onnx")
    language = model.runners["text_encoder"].leases["language_encoder"].runner
    assert language.load_session.path == tiny_bundle / "int8" / "language_encoder.onnx"


def test_scorer_graph_equals_numpy_fusion_within_1e5(ort_model):
    queries = ort_model.embed_images(images(3))
    candidates = ort_model.embed_texts(["a red circle", "a star", "snow scene", "x"])
    assert np.abs(ort_model.score(queries, candidates) - ort_model.numpy_score(queries, candidates)).max() <= 1e-5


def test_numpy_fusion_equals_torch_fusion():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(4, 5, 16)).astype(np.float32)
    c = rng.normal(size=(6, 5, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    c /= np.linalg.norm(c, axis=-1, keepdims=True)
    bias = np.array([0.1, -0.2, 0.0, 0.3], np.float32)
    ours = fused_similarity(q, c, 0.05, 0.07, bias)
    theirs = torch_fused(torch.from_numpy(q), torch.from_numpy(c), 0.05, 0.07, torch.from_numpy(bias)).numpy()
    assert np.abs(ours - theirs).max() <= 1e-5


def test_classify_is_the_softmax_of_the_fused_scores_at_the_model_temperature(ort_model):
    labels = ["beach", "snow", "night"]
    pics = ort_model.embed_images(images(2))
    results = ort_model.classify(pics, labels, template="a {} scene")

    scores = ort_model.numpy_score(pics, ort_model.embed_texts([f"a {label} scene" for label in labels]))
    logits = scores.astype(np.float64) / ort_model.spec.temperature
    probs = np.exp(logits - np.log(np.exp(logits).sum(1, keepdims=True)))
    assert [r["label"] for r in results] == [labels[i] for i in probs.argmax(1)]
    assert np.allclose([r["probability"] for r in results], probs.max(1), atol=1e-5)
    assert np.allclose([[r["scores"][label] for label in labels] for r in results], scores, atol=1e-5)


def test_rank_scores_images_as_the_model_was_trained(ort_model):
    pics = ort_model.embed_images(images(3))
    query = ort_model.embed_texts(["a red circle"])[0]
    assert np.allclose(ort_model.rank(query, pics), ort_model.numpy_score(pics, query[None])[:, 0], atol=1e-5)


def test_a_graph_that_differs_from_its_manifest_is_refused(tmp_path, tiny_bundle):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with open(bundle / "fp32" / "language_encoder.onnx", "ab") as f:
        f.write(b"\0")
    model = Embedder.load(bundle)
    with pytest.raises(ArtifactMismatch, match="does not match its manifest.*python -m export.to_onnx CKPT"):
        model.embed_texts(["a"])


def test_runner_must_be_active():
    runner = OrtRunner(OnnxSessionLoader("missing.onnx"), TEXT_ENCODER)
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer({"input_ids": np.zeros((1, 2), np.int64), "attention_mask": np.zeros((1, 2), np.int64)})


def test_batches_over_an_engine_limit_are_split_and_rejoined():
    calls = []

    def infer(feed):
        calls.append(len(feed["input_ids"]))
        return {"embeddings": feed["input_ids"][:, :, None] * 2}

    ids = np.arange(10)[:, None]
    out = infer_in_chunks(infer, {"input_ids": ids, "attention_mask": ids}, TEXT_ENCODER, {"batch": 4})
    assert calls == [4, 4, 2]
    assert out["embeddings"][:, 0, 0].tolist() == [2 * i for i in range(10)]


def test_candidates_over_an_engine_limit_are_split_and_their_scores_joined_side_by_side():
    calls = []

    def infer(feed):
        calls.append((len(feed["queries"]), len(feed["candidates"])))
        return {"scores": feed["queries"][:, None, 0, 0] + feed["candidates"][None, :, 0, 0]}

    queries, candidates = np.arange(3.0)[:, None, None], 10 * np.arange(5.0)[:, None, None]
    out = infer_in_chunks(infer, {"queries": queries, "candidates": candidates}, SCORER, {"candidates": 2})
    assert calls == [(3, 2), (3, 2), (3, 1)]
    assert out["scores"].tolist() == [[q + 10 * c for c in range(5)] for q in range(3)]


def test_engines_from_another_tensorrt_or_gpu_are_refused_with_the_rebuild_command():
    built = Engines("fp16", "10.3.0", "Orin", {})
    with pytest.raises(
        ArtifactMismatch, match="built with TensorRT 10.3.0, this host has 10.13.0.*python -m export.to_trt"
    ):
        check_engine_origin(built, "10.13.0", "Orin")
    with pytest.raises(ArtifactMismatch, match="built for Orin, this host has NVIDIA H100"):
        check_engine_origin(built, "10.3.0", "NVIDIA H100")


def test_unknown_paths_say_what_is_accepted(tmp_path):
    with pytest.raises(ValueError, match="neither a TensorRT plan"):
        Embedder.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Embedder.load(tmp_path / "nope")


def test_activate_loads_only_the_graphs_named(tiny_bundle):
    model = Embedder.load(tiny_bundle)
    model.activate(["text_encoder"])
    assert {name for name, runner in model.runners.items() if runner.is_active} == {"text_encoder"}
    model.close()
    assert not any(runner.is_active for runner in model.runners.values())


def test_a_text_only_user_never_loads_the_vision_encoder(tiny_bundle):
    with Embedder.load(tiny_bundle) as model:
        model.close()
        model.embed_texts(["a red circle"])
        leases = model.runners["image_encoder"].leases
        assert leases["language_encoder"].runner.is_active and not leases["vision_encoder"].runner.is_active


def test_the_image_and_text_pipelines_share_one_language_session(tiny_bundle):
    with Embedder.load(tiny_bundle) as model:
        image_language = model.runners["image_encoder"].leases["language_encoder"].runner
        assert model.runners["text_encoder"].leases["language_encoder"].runner is image_language
        model.embed_texts(["a red circle"])
        model.runners["text_encoder"].deactivate()
        assert image_language.is_active
        assert model.embed_images(images(1)).shape[0] == 1

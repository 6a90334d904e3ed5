"""The TensorRT runner and loader through a stand-in for TensorRT's engine and cuda-python's memory calls."""

import sys

import numpy as np
import pytest

from agff_deploy.contract import TEXT_ENCODER, model_sizes
from agff_deploy.errors import MissingDependencyError
from agff_deploy.manifest import Engines
from runtime.runner import ArtifactMismatch
from runtime.trt_runner import EngineLoader, TrtRunner
from tests import fake_tensorrt
from tests.fake_tensorrt import FakeEngine

TEXT = TEXT_ENCODER.resolve(model_sizes(14, num_prompts=3, hidden_size=4))
PROFILE = {name: ((1, 2), (2, 5), (4, 8)) for name in TEXT.input_names}


@pytest.fixture
def memory(monkeypatch):
    return fake_tensorrt.install(monkeypatch)


def first_token_embeddings(feed):
    """Each text embedded as its first token id, in every prompt and dimension."""
    ids = feed["input_ids"].astype(np.float32)
    return {"embeddings": np.broadcast_to(ids[:, :1, None], (len(ids), 3, 4)).copy()}


def text_engine(input_dtype=np.int64) -> FakeEngine:
    inputs = {name: np.dtype(input_dtype) for name in TEXT.input_names}
    return FakeEngine(inputs, {"embeddings": np.dtype(np.float32)}, PROFILE, first_token_embeddings)


def text_feed(batch, length=3):
    ids = np.arange(batch * length, dtype=np.int64).reshape(batch, length)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def test_a_batch_over_the_profile_maximum_runs_in_pieces_and_comes_back_whole(memory):
    engine = text_engine()
    with TrtRunner(lambda: engine, TEXT) as runner:
        out = runner.infer(text_feed(10))
        calls = [shapes["input_ids"][0] for shapes in runner.context.calls]
    assert calls == [4, 4, 2]
    assert out["embeddings"][:, 0, 0].tolist() == [3.0 * i for i in range(10)]


def test_a_text_longer_than_the_profile_is_refused_with_the_range(memory):
    engine = text_engine()
    with TrtRunner(lambda: engine, TEXT) as runner:
        with pytest.raises(ValueError, match=r"input_ids of shape \(1, 9\) is outside the engine's profile"):
            runner.infer(text_feed(1, length=9))


def test_an_engine_whose_inputs_are_not_the_contract_s_dtypes_is_refused_instead_of_cast(memory):
    engine = text_engine(input_dtype=np.int32)
    with pytest.raises(ArtifactMismatch, match="input input_ids int32.*the contract says.*input input_ids int64"):
        TrtRunner(lambda: engine, TEXT).activate()


def test_activating_twice_creates_one_stream_and_deactivating_frees_all_device_memory(memory):
    engine = text_engine()
    runner = TrtRunner(lambda: engine, TEXT)
    runner.activate()
    runner.infer(text_feed(2))
    runner.activate()
    assert memory.streams_created == 1 and len(memory.blocks) == 3
    runner.deactivate()
    assert memory.blocks == {} and memory.streams == set()


def test_a_plan_whose_bytes_changed_is_refused_with_the_rebuild_command(memory, tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"a different plan")
    engines = Engines("fp16", fake_tensorrt.VERSION, fake_tensorrt.GPU, {})
    with pytest.raises(ArtifactMismatch, match="does not match its manifest.*python -m export.to_trt BUNDLE"):
        EngineLoader(plan, engines, "0" * 64)()


def test_a_plan_built_for_another_gpu_is_refused_before_it_is_read(memory, tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"")
    engines = Engines("fp16", fake_tensorrt.VERSION, "Orin", {})
    with pytest.raises(ArtifactMismatch, match="built for Orin, this host has Fake GPU"):
        EngineLoader(plan, engines)()


def test_a_plan_on_a_host_without_tensorrt_is_one_missing_dependency_error(tmp_path, monkeypatch):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed.*--backend onnxruntime"):
        EngineLoader(plan, Engines("fp16", "10.3", "Orin", {}))()

"""The runner contract (after Polygraphy's BaseRunner): activation once, checked feeds, outputs by name, timing."""

import numpy as np
import pytest
import torch

from agff_deploy.contract import LANGUAGE_ENCODER, TEXT_ENCODER
from runtime.embedder import Embedder
from runtime.ort_runner import OnnxSessionLoader, OrtRunner
from runtime.runner import ArtifactMismatch, Runner
from runtime.torch_runner import TorchRunner


class CountingRunner(Runner):
    """A backend that counts what the base class asks of it and embeds each text as its first token id."""

    def __init__(self) -> None:
        super().__init__(TEXT_ENCODER)
        self.calls = {"activate": 0, "infer": 0, "deactivate": 0}

    def activate_impl(self) -> None:
        self.calls["activate"] += 1

    def infer_impl(self, feed):
        self.calls["infer"] += 1
        return {"embeddings": feed["input_ids"][:, :1, None].astype(np.float32)}

    def deactivate_impl(self) -> None:
        self.calls["deactivate"] += 1


def text_feed(batch=2):
    return {"input_ids": np.arange(batch * 3).reshape(batch, 3), "attention_mask": np.ones((batch, 3), np.int64)}


def test_activating_twice_loads_once_and_deactivating_twice_frees_once():
    runner = CountingRunner()
    runner.activate()
    runner.activate()
    runner.deactivate()
    runner.deactivate()
    assert (runner.calls["activate"], runner.calls["deactivate"]) == (1, 1)


def test_a_runner_is_active_inside_its_with_block_only():
    runner = CountingRunner()
    with runner as active:
        assert active is runner and runner.is_active
    assert not runner.is_active


def test_outputs_come_by_name_and_the_inference_time_is_recorded():
    with CountingRunner() as runner:
        assert runner.last_inference_time() is None
        outputs = runner.infer(text_feed())
        assert outputs["embeddings"][:, 0, 0].tolist() == [0, 3]
        assert runner.last_inference_time() > 0


def test_a_feed_outside_the_contract_never_reaches_the_backend():
    with CountingRunner() as runner:
        feed = dict(text_feed(), input_ids=np.zeros((2, 3), np.int32))
        with pytest.raises(ValueError, match="text_encoder: input_ids must be int64, got int32"):
            runner.infer(feed)
        assert runner.calls["infer"] == 0


def test_batches_over_the_backend_limit_reach_it_in_pieces_and_come_back_whole():
    with CountingRunner() as runner:
        runner.limits = {"batch": 2}
        outputs = runner.infer(text_feed(batch=5))
    assert runner.calls["infer"] == 3
    assert outputs["embeddings"][:, 0, 0].tolist() == [0, 3, 6, 9, 12]


class StandInModel:
    """What TorchRunner's activation touches of a model, without a GPU."""

    def to(self, device):
        return self

    def eval(self):
        return self


@pytest.fixture
def tf32_on():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_the_pytorch_reference_turns_tf32_off_while_active_and_restores_it_after(tf32_on):
    with TorchRunner(StandInModel(), TEXT_ENCODER, device="cuda"):
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)


def test_runners_sharing_a_model_leave_tf32_as_found_when_deactivated_in_reverse(tf32_on):
    first, second = (TorchRunner(StandInModel(), TEXT_ENCODER, device="cuda") for _ in range(2))
    with first, second:
        pass
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)


def stored_runners(model: Embedder) -> dict:
    """The runners of the stored graphs under the Embedder's pipelines, each once."""
    runners = {name: lease.runner for p in model.runners.values() for name, lease in getattr(p, "leases", {}).items()}
    return {**runners, "scorer": model.runners["scorer"]}


def counted_loads(model: Embedder) -> dict[str, int]:
    """Count each stored graph's session loads from now on."""
    runners = stored_runners(model)
    loads = dict.fromkeys(runners, 0)
    for name, runner in runners.items():
        load = runner.load_session

        def counting(name=name, load=load):
            loads[name] += 1
            return load()

        runner.load_session = counting
    return loads


def test_entering_an_embedder_after_first_use_loads_each_graph_once(tiny_bundle):
    model = Embedder.load(tiny_bundle)
    loads = counted_loads(model)
    model.embed_texts(["a red circle"])
    with model:
        model.embed_texts(["a snow scene"])
        model.embed_images([np.zeros((56, 56, 3), np.uint8)])
    assert loads == {"vision_encoder": 1, "language_encoder": 1, "scorer": 1}
    assert not any(runner.is_active for runner in stored_runners(model).values())


def test_an_embedder_deactivates_its_runners_in_reverse_order(tiny_bundle):
    order = []
    with Embedder.load(tiny_bundle) as model:
        for name, runner in model.runners.items():
            deactivate = runner.deactivate_impl
            runner.deactivate_impl = lambda name=name, deactivate=deactivate: (order.append(name), deactivate())
    assert order == ["scorer", "text_encoder", "image_encoder"]


def test_a_graph_whose_tensors_are_not_its_contract_s_is_refused_when_it_loads(tiny_bundle):
    runner = OrtRunner(OnnxSessionLoader(tiny_bundle / "fp32" / "vision_encoder.onnx"), LANGUAGE_ENCODER)
    found = "image_features tensor\\(float\\), image_grid tensor\\(int64\\), pixel_values tensor\\(float\\);"
    with pytest.raises(ArtifactMismatch, match=f"the language_encoder graph has {found}"):
        runner.activate()
    assert not runner.is_active

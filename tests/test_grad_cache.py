"""GradCache: a step embedded in chunks takes the step the whole batch takes at once."""

import dataclasses

import pytest
import torch

from agff_deploy.model import AGFFEmbedder
from agff_deploy.presets import local_tokenizer, preset_config
from tests.ranks import assert_same_step, record_three_steps, recorded, run_on_ranks, run_settings, three_steps
from train.contrastive import Shard
from train.grad_cache import chunked_backward
from train.run import parse_args
from train.trainer import Trainer


@pytest.fixture(scope="module")
def whole_batch(tmp_path_factory):
    """Three unchunked steps in one process: the reference."""
    return three_steps(run_settings(tmp_path_factory.mktemp("whole"), ega_alpha=1.0))


@pytest.mark.parametrize("chunk_size", [4, 3], ids=["even chunks", "a short last chunk"])
def test_a_chunked_step_takes_the_step_of_the_whole_batch(tmp_path, whole_batch, chunk_size):
    assert_same_step(three_steps(run_settings(tmp_path, ega_alpha=1.0, chunk_size=chunk_size)), whole_batch)


# shards of 4 pairs in chunks of 3 + 1; with K = 0 the fusion goes unused and DDP must look for unused parameters
TWO_RANK_RUNS = {"K = 2": {}, "K = 0": {"num_fine": 0}}


@pytest.fixture(scope="module")
def two_ranks_in_chunks(tmp_path_factory):
    """Each of TWO_RANK_RUNS chunked on 2 ranks (one spawn for all), and unchunked in one process."""
    folder = tmp_path_factory.mktemp("chunked")
    settings = {name: run_settings(folder / "out", ega_alpha=1.0, **run) for name, run in TWO_RANK_RUNS.items()}
    chunked = {name: dataclasses.replace(s, chunk_size=3) for name, s in settings.items()}
    run_on_ranks(record_three_steps, chunked, folder)
    return folder, {name: three_steps(s) for name, s in settings.items()}


@pytest.mark.parametrize("name", list(TWO_RANK_RUNS))
def test_chunks_on_two_ranks_take_the_step_one_process_takes_on_the_whole_batch(two_ranks_in_chunks, name):
    folder, whole = two_ranks_in_chunks
    assert_same_step(recorded(folder, name, rank=0), whole[name])


def test_a_chunk_re_run_under_dropout_backpropagates_through_the_masks_of_its_first_pass(tmp_path):
    tokenizer = local_tokenizer()
    config = preset_config("tiny", tokenizer, ega_alpha=1.0)
    config.base["text_config"]["attention_dropout"] = 0.3  # a base config may set it; the presets do not
    torch.manual_seed(0)
    trainer = Trainer(run_settings(tmp_path), AGFFEmbedder(config), tokenizer)
    shard = Shard.of(trainer.source.batch(0), trainer.replica, trainer.device)
    chunks = shard.chunks(3)
    assert not torch.equal(trainer.objective.embed(chunks[0])[0], trainer.objective.embed(chunks[0])[0])

    torch.manual_seed(1)
    chunked_backward(trainer.step_module, shard, 3)
    chunked = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    trainer.optimizer.zero_grad()
    torch.manual_seed(1)  # one graph through the chunks in the same order: the same masks, drawn once
    embedded = [trainer.objective.embed(chunk) for chunk in chunks]
    queries, candidates = torch.cat([q for q, _ in embedded]), torch.cat([c for _, c in embedded])
    trainer.objective.loss(queries, candidates, shard).backward()
    for name, param in trainer.model.named_parameters():
        # float32 gradients summed over chunks rather than in one graph: up to 1.9e-6 x the tensor's largest gradient
        # seen (prompts.vectors: 3.6e-7 of 0.19) over the default, AVX2 and AVX-512 kernels; ~10x that, to scale
        atol = 2e-5 * param.grad.abs().max().item()
        torch.testing.assert_close(chunked[name], param.grad, rtol=0, atol=atol, msg=name)


def test_the_cli_refuses_a_chunk_size_below_one(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--chunk-size", "0"])
    assert "argument --chunk-size: must be a positive whole number, got 0" in capsys.readouterr().err

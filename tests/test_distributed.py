"""Data-parallel training: 2 ranks on gloo, each with half of the global batch, take the step that one
process takes on the whole batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from agff_deploy.checkpoint import WEIGHTS_FILE, load_checkpoint
from agff_deploy.similarity import FusedSimilarity
from tests.ranks import (
    WEIGHT_TOLERANCE,
    WORLD_SIZE,
    assert_same_step,
    record_three_steps,
    recorded,
    run_on_ranks,
    run_settings,
    three_steps,
)
from train.distributed import Replica
from train.ega import amplified_probabilities, ega_cross_entropy, ega_loss, sharded_ega_loss
from train.run import main
from train.trainer import LOG_FILE, STATE_FILE, Trainer

RUNS = {
    "image->text, alpha 0": {"tasks": "i2t", "ega_alpha": 0.0},
    "image->text, alpha 1": {"tasks": "i2t", "ega_alpha": 1.0},
    "text->image, alpha 1": {"data": "t2i.jsonl", "ega_alpha": 1.0},
    "same answers on both ranks": {"tasks": "cls", "ega_alpha": 1.0},  # class labels repeat across the shards
    "single embedding (K = 0)": {"tasks": "i2t", "ega_alpha": 1.0, "num_fine": 0},  # the fusion goes unused
    "Qwen3-VL, DeepStack": {"tasks": "i2t", "ega_alpha": 1.0, "preset": "tiny-qwen3-vl"},
}
# One direction of the loss on its own: embeddings and fusion in float64, so the ranks' sums and one process's
# differ only in summation order, which varies with the CPU's kernels: by a few rounding steps of each value's size
# (the temperature's gradient is ~100, where one step is 1.4e-14: 1.3 steps seen) and by the rounding of the O(1)
# terms behind it (log_t_f's gradient, ~0.05, is a difference of such terms: up to 3.9e-15 seen, 2.4e-15 elsewhere),
# over the default, AVX2 and AVX-512 kernels. Tolerance ~10x that: ATOL + RTOL * |value|.
EPS = torch.finfo(torch.float64).eps  # one rounding step relative to a float64 value's size
DIRECTION_RTOL, DIRECTION_ATOL = 8 * EPS, 4e-14
DIRECTIONS = ("query->candidate", "candidate->query")
B, ITEMS, DIM = 8, 3, 4


def text_to_image_rows(folder):
    """MMEB-style rows with a text query and an image candidate: the reverse of the built-in tasks."""
    (folder / "img").mkdir()
    rows = []
    for i, colour in enumerate(["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "grey"]):
        Image.new("RGB", (40, 40), colour).save(folder / "img" / f"{i}.png")
        rows.append({"qry": f"find {colour}", "qry_image_path": "", "pos_text": "", "pos_image_path": f"img/{i}.png"})
    (folder / "t2i.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """One spawn of 2 ranks for every test here: the runs of RUNS, the first half of a 4-step run
    (checkpointed for `test_a_run_resumes_at_another_world_size`) and each direction of the loss."""
    folder = tmp_path_factory.mktemp("ranks")
    text_to_image_rows(folder)
    run_on_ranks(_ranks_job, runs_settings(folder), folder)
    return folder


def runs_settings(folder):
    return {
        name: run_settings(folder / "out", **{k: str(folder / v) if k == "data" else v for k, v in run.items()})
        for name, run in RUNS.items()
    }


def _ranks_job(settings, folder):
    record_three_steps(settings, folder)
    Trainer.create(run_settings(folder / "resumed", steps=4, save_every=2)).run(until=2)
    replica = Replica.from_environment()
    for direction in DIRECTIONS:
        for alpha in (0.0, 1.0):
            result = direction_gradients(direction, alpha, replica)
            save_file(result, folder / f"{direction} {alpha}.rank{replica.rank}")


@pytest.fixture(scope="module")
def single(ranks):
    """The runs of RUNS in this one process, on the whole batch."""
    return {name: three_steps(settings) for name, settings in runs_settings(ranks).items()}


@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_take_the_step_one_process_takes_on_the_whole_batch(ranks, single, name):
    assert_same_step(recorded(ranks, name, rank=0), single[name])


@pytest.mark.parametrize("name", list(RUNS))
def test_every_rank_ends_with_the_same_weights_temperature_and_fusion(ranks, name):
    first, second = recorded(ranks, name, 0), recorded(ranks, name, 1)
    assert "weight:log_temperature" in first and "weight:fusion.pattern_bias" in first
    assert all(torch.equal(first[k], second[k]) for k in first if k.startswith("weight:"))


def test_a_run_resumes_at_another_world_size(ranks, tmp_path):
    Trainer.resume(ranks / "resumed").run()
    Trainer.create(run_settings(tmp_path, steps=4)).run()
    resumed, straight = load_file(ranks / "resumed" / WEIGHTS_FILE), load_file(tmp_path / WEIGHTS_FILE)
    for name, weight in straight.items():
        torch.testing.assert_close(resumed[name], weight, rtol=0, atol=WEIGHT_TOLERANCE, msg=name)


def direction_loss(direction, queries, candidates, fusion, temperature, alpha, replica):
    """This rank's rows of one direction: its items against every item of the global batch."""
    offset = replica.rank * queries.shape[0]
    if direction == "query->candidate":
        logits = fusion(queries, replica.gather(candidates))
    else:
        logits = fusion(replica.gather(queries), candidates).T
    return ega_cross_entropy(logits / temperature, alpha, offset)


def direction_gradients(direction, alpha, replica):
    """The loss and its gradients with respect to this rank's embeddings and to the fusion and temperature."""
    generator = torch.Generator().manual_seed(0)
    queries, candidates = (
        torch.nn.functional.normalize(torch.randn(B, ITEMS, DIM, generator=generator, dtype=torch.float64), dim=-1)
        for _ in range(2)
    )
    mine = slice(replica.rank * B // replica.world_size, (replica.rank + 1) * B // replica.world_size)
    queries, candidates = queries[mine].requires_grad_(), candidates[mine].requires_grad_()
    fusion = FusedSimilarity(0.05, 0.1, (0.0, -0.1, -0.1, -0.2)).double()
    temperature = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    loss = direction_loss(direction, queries, candidates, fusion, temperature, alpha, replica)
    loss.backward()
    grads = {"queries": queries.grad, "candidates": candidates.grad, "temperature": temperature.grad}
    return {"loss": loss.detach(), **grads, **{n: p.grad for n, p in fusion.named_parameters()}}


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_each_direction_of_the_loss_averages_over_ranks_to_the_single_process_gradient(ranks, direction, alpha):
    """Ranks' losses average to the whole batch's; an embedding's gradient on its rank, summed over every
    rank's loss by the gather, is world size x its share of the global loss; DDP averages the rest."""
    single = direction_gradients(direction, alpha, Replica())
    shards = [load_file(ranks / f"{direction} {alpha}.rank{r}") for r in range(WORLD_SIZE)]
    tolerance = {"rtol": DIRECTION_RTOL, "atol": DIRECTION_ATOL}
    torch.testing.assert_close(sum(r["loss"] for r in shards) / WORLD_SIZE, single["loss"], **tolerance)
    for side in ("queries", "candidates"):
        joined = torch.cat([r[side] for r in shards]) / WORLD_SIZE
        torch.testing.assert_close(joined, single[side], **tolerance, msg=side)
    for name in ("temperature", "log_t_f", "pattern_bias"):
        averaged = sum(r[name] for r in shards) / WORLD_SIZE
        torch.testing.assert_close(averaged, single[name], **tolerance, msg=name)


def test_ega_on_a_shards_rows_equals_those_rows_of_the_whole_matrix():
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    whole = amplified_probabilities(z, alpha=1.5)
    shard = amplified_probabilities(z[4:], alpha=1.5, offset=4)
    torch.testing.assert_close(shard, whole[4:], rtol=0, atol=1e-15)
    # a row of Pbar - I sums to 0 up to the rounding of adding its 8 terms, whose sizes add to 3.3..5.0 (where one
    # rounding step is up to 8.9e-16): bounded by 8 ulps of that sum; 0.4 ulps (4.3e-16) seen
    rows = shard - torch.eye(8, dtype=torch.float64)[4:]
    assert (rows.sum(dim=1).abs() <= 8 * EPS * rows.abs().sum(dim=1)).all()


def test_shard_losses_with_repeated_answers_average_to_the_whole_batch_loss():
    s = torch.randn(8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.1
    same = torch.eye(8, dtype=torch.bool)
    same[1, 6] = same[6, 1] = True  # one candidate in both halves
    t = torch.tensor(0.05, dtype=torch.float64)
    halves = [sharded_ega_loss(s[h], s.T[h], t, 1.0, same, offset=h.start) for h in (slice(0, 4), slice(4, 8))]
    # the same 16 row losses (~3.7, where one rounding step is 4.4e-16) averaged in another order: a few steps of the
    # loss's size; equal here
    torch.testing.assert_close(sum(halves) / 2, ega_loss(s, t, 1.0, same), rtol=8 * EPS, atol=0)


def test_each_rank_takes_its_own_consecutive_slice_of_the_global_batch():
    batch = list("abcdefgh")
    assert [Replica(rank, 4).shard(batch) for rank in range(4)] == [
        (["a", "b"], 0),
        (["c", "d"], 2),
        (["e", "f"], 4),
        (["g", "h"], 6),
    ]


def test_a_world_size_that_does_not_divide_the_batch_is_an_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["--preset", "tiny", "--batch-size", "8", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "error: --batch-size 8 is the global batch and must split evenly over the 3 processes; "
        "choose a batch size that is a multiple of 3\n"
    )


def torchrun(*args):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD_SIZE), "-m", "train.run"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300, check=True)


@pytest.mark.slow  # two torchrun launches of 2 processes each: about 30 s on 2 cores
def test_torchrun_trains_and_resumes_with_one_log_one_report_and_one_checkpoint(tmp_path):
    args = ["--preset", "tiny", "--batch-size", "8", "--eval-pairs", "0", "--out", str(tmp_path)]
    first = torchrun(*args, "--steps", "2")
    resumed = torchrun("--resume", "--steps", "3", "--eval-pairs", "0", "--out", str(tmp_path))
    assert first.stdout.count("trained to step 2") == 1 and resumed.stdout.count("trained to step 3") == 1
    assert "on cpu x 2 processes" in first.stdout
    rows = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert json.loads((tmp_path / STATE_FILE).read_text())["step"] == 3
    load_checkpoint(tmp_path)

"""Ranks of a data-parallel run inside a test: fresh processes joined in a gloo group on this machine,
each with the environment torchrun gives its workers, and what the equivalence tests record of a run."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from train.distributed import Replica
from train.trainer import Trainer, TrainSettings

WORLD_SIZE = 2
LR = 1e-4
# float32 rounding of a different batch split: up to 1.7e-6 seen in losses (~2.1) and 1.2e-6 in gradients (<= 0.13)
# over the default, AVX2 and AVX-512 kernels
TOLERANCE = 1e-5
# AdamW moves a weight by up to ~lr * |g| / eps (eps 1e-8) a step even where its gradient g is ~1e-9, all rounding
# noise, and that noise moves with it: 1.8e-5 seen (AVX-512 kernels) at one weight of 100k after 3 steps at lr 1e-4,
# whose first gradient was 2.8e-9 in one process and 3.9e-10 on the ranks (0.18 lr from that step alone); <= 3.4e-6
# elsewhere. Such noise in each of the 3 steps could add up to ~0.7 lr, so lr/4 (2.5e-5) was no bound: lr is.
WEIGHT_TOLERANCE = LR


def run_on_ranks(worker: Callable[..., None], *args: object) -> None:
    """`worker(*args)` on every rank of a `WORLD_SIZE`-process run; returns when all have finished."""
    torch.multiprocessing.spawn(_as_rank, args=(_free_port(), worker, args), nprocs=WORLD_SIZE)


def _as_rank(rank: int, port: int, worker: Callable[..., None], args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    try:
        worker(*args)
    finally:
        Replica.from_environment().stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_settings(out: Path, **changes: object) -> TrainSettings:
    """A tiny run with a global batch of 8, at full learning rate from the first step."""
    return TrainSettings(
        **{"out": str(out), "preset": "tiny", "steps": 3, "batch_size": 8, "lr": LR, "warmup": 1, "eval_pairs": 0}
        | changes
    )


def three_steps(settings: TrainSettings) -> dict[str, torch.Tensor]:
    """The losses of 3 steps, the (clipped) gradients of the first and the weights after the third."""
    trainer = Trainer.create(settings)
    losses = [trainer.train_step()]
    grads = {f"grad:{n}": p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    losses += [trainer.train_step() for _ in range(2)]
    weights = {f"weight:{n}": p.detach().clone() for n, p in trainer.model.named_parameters()}
    return {"loss": torch.tensor(losses), **grads, **weights}


def record_three_steps(runs: dict[str, TrainSettings], folder: Path) -> None:
    """Rank worker: `three_steps` of every run, saved as `folder/<name>.rank<r>.safetensors`."""
    rank = Replica.from_environment().rank
    for name, settings in runs.items():
        save_file(three_steps(settings), folder / f"{name}.rank{rank}.safetensors")


def recorded(folder: Path, name: str, rank: int) -> dict[str, torch.Tensor]:
    return load_file(folder / f"{name}.rank{rank}.safetensors")


def assert_same_step(ranks: dict[str, torch.Tensor], single: dict[str, torch.Tensor]) -> None:
    """Losses and first-step gradients within TOLERANCE of the single process's, final weights within
    WEIGHT_TOLERANCE."""
    assert ranks.keys() == single.keys()
    for key, value in single.items():
        atol = WEIGHT_TOLERANCE if key.startswith("weight:") else TOLERANCE
        torch.testing.assert_close(ranks[key], value, rtol=0, atol=atol, msg=lambda m, key=key: f"{key}: {m}")

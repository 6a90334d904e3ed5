"""Data parallelism over the processes torchrun starts: this process's rank, its shard of each batch,
and the collectives the contrastive loss needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/MASTER_PORT for the rendezvous).
Without them the run is one process, and every method here is the identity.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from agff_deploy.errors import InputError

T = TypeVar("T")

# torch 2.13 renamed the tensor collectives; the older names still work there, with a warning
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass(frozen=True)
class Replica:
    """One process of a data-parallel run (rank 0 of 1 when not started by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Replica:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        """The process that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self) -> torch.device:
        """This process's GPU (one per process, by local rank), or the CPU."""
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def check_divides(self, batch_size: int) -> None:
        """The global batch splits into equal shards, or the shards' losses would not average to its loss."""
        if batch_size % self.world_size:
            raise InputError(
                f"--batch-size {batch_size} is the global batch and must split evenly over the "
                f"{self.world_size} processes; choose a batch size that is a multiple of {self.world_size}"
            )

    def start(self) -> None:
        """Join the process group: NCCL between GPUs, gloo between CPU processes."""
        if not self.distributed or dist.is_initialized():
            return
        device = self.device()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=self.rank, world_size=self.world_size)

    def stop(self) -> None:
        """Leave the process group; drop every reference to the DDP of `wrap` first.

        DDP's reducer holds the gloo group, and a reducer freed after the group is destroyed frees it
        with the GIL held while gloo's worker threads may wait for the GIL: a hang at exit
        (pytorch/pytorch#56297). DDP sits in reference cycles, so it is collected here, before.
        """
        if dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()

    def wrap(self, module: nn.Module, find_unused: bool) -> nn.Module:
        """DistributedDataParallel around `module`: its backward then averages gradients over the ranks.

        `find_unused`: some steps may leave a parameter without gradient, which DDP must then look for
        in every step's graph (a small cost, and a warning when it finds none).
        """
        if not self.distributed:
            return module
        device_ids = [self.local_rank] if self.device().type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused)

    def shard(self, batch: Sequence[T]) -> tuple[list[T], int]:
        """This rank's contiguous slice of the global batch and the global index of its first item."""
        if len(batch) % self.world_size:
            raise InputError(
                f"a batch of {len(batch)} pairs does not split evenly over {self.world_size} processes "
                "(the data holds fewer rows than --batch-size?)"
            )
        size = len(batch) // self.world_size
        offset = self.rank * size
        return list(batch[offset : offset + size]), offset

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` concatenated in rank order; gradients flow back to the rank that owns each row."""
        return _GatherWithGrad.apply(tensor) if self.distributed else tensor

    def average(self, value: torch.Tensor) -> float:
        """The mean of a scalar over ranks (what the whole global batch's loss is, from the shards' losses)."""
        if not self.distributed:
            return value.item()
        total = value.detach().float().clone()
        dist.all_reduce(total)
        return total.item() / self.world_size


class _GatherWithGrad(torch.autograd.Function):
    """all-gather whose backward sums every rank's gradient for a row on the rank that owns it (reduce-scatter)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        gathered = tensor.new_empty((dist.get_world_size() * tensor.shape[0], *tensor.shape[1:]))
        _all_gather(gathered, tensor.contiguous())
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        local = grad.new_empty((grad.shape[0] // dist.get_world_size(), *grad.shape[1:]))
        _reduce_scatter(local, grad.contiguous())
        return local

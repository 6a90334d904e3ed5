"""GradCache: a contrastive step over more pairs than fit in memory with their activations at once.

The loss couples every item to every other, so it does not split into per-chunk losses, but its
backward splits at the embeddings (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup"; VLM2Vec trains this way):

1. embed the shard chunk by chunk without a graph, so one chunk's activations are alive at a time;
2. compute the loss over all the embeddings (the whole global batch, EGA included) and its gradient
   with respect to the embeddings and to the loss's own parameters (temperature, fusion);
3. re-run each chunk with a graph and backpropagate the cached gradient of its embeddings.

The accumulated gradient is the unchunked step's, up to float summation order. Step 1 costs one
extra forward pass per step; the peak holds one chunk's activations plus every item's embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .contrastive import ContrastiveStep, Shard


@dataclass(frozen=True)
class CachedGradients:
    """The loss's gradient with respect to one chunk's embeddings and, once per step, to the loss's own parameters."""

    queries: torch.Tensor
    candidates: torch.Tensor
    parameters: tuple[tuple[nn.Parameter, torch.Tensor], ...] = ()

    def __call__(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """A scalar whose gradient is the cached one: d<e(theta), g>/dtheta = g de/dtheta, the chain rule's rest."""
        total = torch.sum(queries * self.queries) + torch.sum(candidates * self.candidates)
        for parameter, grad in self.parameters:
            total = total + torch.sum(parameter * grad)
        return total


class RandomState:
    """The generators' state before a chunk's first pass, so its re-run draws the same dropout masks.

    The presets and Qwen2-VL-2B train without dropout, but a `--base` config may set attention dropout.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def chunked_backward(step: nn.Module, shard: Shard, chunk_size: int) -> torch.Tensor:
    """Accumulate the gradient of the shard's loss into `.grad`, `chunk_size` pairs per pass; returns the loss.

    `step` is the `ContrastiveStep` or DDP around it; under DDP only the last chunk's backward averages
    gradients across ranks (the others run under `no_sync`), and it carries the loss parameters' gradients
    too, so DDP averages everything that trains once per step.
    """
    contrastive = cast(ContrastiveStep, step.module if isinstance(step, DistributedDataParallel) else step)
    chunks = shard.chunks(chunk_size)
    states, embedded = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandomState(contrastive.device))
            embedded.append(contrastive.embed(chunk))
    queries = torch.cat([q for q, _ in embedded]).requires_grad_()
    candidates = torch.cat([c for _, c in embedded]).requires_grad_()
    loss = contrastive.loss(queries, candidates, shard)
    trainable = [p for p in contrastive.parameters() if p.requires_grad]
    query_grads, candidate_grads, *grads = torch.autograd.grad(
        loss, [queries, candidates, *trainable], allow_unused=True
    )
    own = tuple((p, g) for p, g in zip(trainable, grads, strict=True) if g is not None)
    for i, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
        span = slice(i * chunk_size, i * chunk_size + len(chunk))
        last = i == len(chunks) - 1
        cached = CachedGradients(query_grads[span], candidate_grads[span], own if last else ())
        defer_sync = step.no_sync() if isinstance(step, DistributedDataParallel) and not last else nullcontext()
        with state.replay(), defer_sync:
            step(chunk, cached).backward()
    return loss.detach()

"""One rank's contrastive step: its shard of the global batch embedded, scored against every item of the
global batch with the fused similarity, and the symmetric EGA loss of its own rows and columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from agff_deploy.inputs import ItemEncoder, ModelInputs
from agff_deploy.model import AGFFEmbedder

from .distributed import Replica
from .ega import contrastive_logits, hard_negative_share, symmetric_ega_loss
from .pairs import Pair, load_image

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Items:
    """One side of some pairs, images decoded: what the model embeds in one pass."""

    texts: list[str]
    images: list

    def __getitem__(self, span: slice) -> Items:
        return Items(self.texts[span], self.images[span])


@dataclass(frozen=True)
class Shard:
    """A rank's pairs, global items offset..offset+len-1, and `same`: the global `[B, B]` mask of
    pairs whose candidates are one item, so never negatives of each other."""

    queries: Items
    candidates: Items
    same: torch.Tensor
    offset: int

    @classmethod
    def of(cls, batch: Sequence[Pair], replica: Replica, device: torch.device) -> Shard:
        """This rank's shard of a global batch; only its own images are decoded."""
        pairs, offset = replica.shard(batch)
        queries = Items([p.query_text for p in pairs], [load_image(p.query_image) for p in pairs])
        candidates = Items([p.pos_text for p in pairs], [load_image(p.pos_image) for p in pairs])
        return cls(queries, candidates, same_candidates(batch, device), offset)

    def __len__(self) -> int:
        return len(self.queries.texts)

    def chunks(self, size: int) -> list[Shard]:
        """Consecutive pieces of at most `size` pairs, each a shard of the same global batch."""
        return [
            Shard(self.queries[i : i + size], self.candidates[i : i + size], self.same, self.offset + i)
            for i in range(0, len(self), size)
        ]


def same_candidates(batch: Sequence[Pair], device: torch.device) -> torch.Tensor:
    """`[B, B]`: True where two pairs have the same candidate (the same answer text, say)."""
    ids: dict[str, int] = {}
    index = torch.tensor([ids.setdefault(p.candidate_key, len(ids)) for p in batch], device=device)
    return index[:, None] == index[None, :]


class ContrastiveStep(nn.Module):
    """What a training step differentiates; the module DistributedDataParallel wraps.

    The learned temperature and the fusion's temperature and biases are used inside `forward`,
    so DDP averages their gradients with the backbone's and every rank keeps the same values.
    """

    def __init__(self, model: AGFFEmbedder, encoder: ItemEncoder, replica: Replica, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.encoder = encoder
        self.replica = replica
        self.device = device
        self.hard_share: float | None = None  # the last loss's share of hard negatives (this rank's rows), logged

    def prepare(self, batch: Sequence[Pair]) -> Shard:
        return Shard.of(batch, self.replica, self.device)

    def forward(self, shard: Shard, objective: Objective | None = None) -> torch.Tensor:
        """The shard's loss, or `objective` of its embeddings (GradCache's re-run of one chunk)."""
        queries, candidates = self.embed(shard)
        if objective is None:
            return self.loss(queries, candidates, shard)
        return objective(queries, candidates)

    def embed(self, shard: Shard) -> tuple[torch.Tensor, torch.Tensor]:
        """`[b, K+1, D]` query and candidate embeddings of the shard's pairs."""
        with self._autocast():
            return self._embed_side(shard.queries), self._embed_side(shard.candidates)

    def loss(self, queries: torch.Tensor, candidates: torch.Tensor, shard: Shard) -> torch.Tensor:
        """The mean over this rank's b items of their rows and columns against the whole global batch.

        Every rank's queries and candidates come in through an all-gather whose backward sums all ranks'
        gradients for an item on the rank that owns it. Over b, not B, each rank's loss is W times its
        share of the global loss (their mean is the global loss), so each rank gets W times its share of
        the global gradient, for its items and for the temperature and fusion alike; DDP's mean over the
        W ranks is then the gradient one process gets from the whole batch.
        """
        with self._autocast():
            queries, candidates = queries.float(), candidates.float()
            all_queries, all_candidates = self.replica.gather(queries), self.replica.gather(candidates)
            rows = self.model.similarity(queries, all_candidates)
            # this rank's columns of S: every query against its candidates (not S(c, q): the fusion biases
            # global->fine and fine->global differently, so the similarity is not symmetric)
            columns = rows.T if not self.replica.distributed else self.model.similarity(all_queries, candidates).T
            row_logits, column_logits = contrastive_logits(
                rows, columns, self.model.temperature, shard.same, shard.offset
            )
            with torch.no_grad():
                self.hard_share = float(
                    (hard_negative_share(row_logits, shard.offset) + hard_negative_share(column_logits, shard.offset))
                    / 2
                )
            return symmetric_ega_loss(row_logits, column_logits, self.model.config.ega_alpha, shard.offset)

    def _embed_side(self, items: Items) -> torch.Tensor:
        def run(inputs: ModelInputs) -> torch.Tensor:
            inputs = inputs.to(self.device)
            return self.model(inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.image_grid)

        return self.encoder.embed_mixed(run, items.texts, items.images)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

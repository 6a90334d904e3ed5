"""EGA: InfoNCE whose backward amplifies in-batch hard negatives.

For logits z (similarity / temperature, B x B, positives on the diagonal) the
forward is plain InfoNCE, L = -mean_i log p_ii with p = softmax(z) per row.
Autograd's gradient is dL/dz = (P - I) / B. EGA replaces P by

    r_ij   = min(1, p_ij / p_ii)                      relative hardness, j != i
    Pbar_ij = p_ij + alpha * p_ij * r_ij               j != i
    Pbar_ii = p_ii - alpha * sum_{j != i} p_ij * r_ij

so a negative whose score comes close to the positive's (r -> 1) is pushed up
to (1 + alpha) times harder, easy negatives (r -> 0) keep their gradient, and
each row of (Pbar - I) still sums to zero: the positive is pulled with exactly
the extra force the negatives receive. alpha = 0 gives autograd's gradient.
The loss is symmetric: the same treatment on the transposed matrix
(candidate -> query), averaged.

Everything is per row, so a rank of a distributed run takes the b rows of its
own items against all B columns of the global batch (positives on the diagonal
shifted by the rank's offset); the mean over its rows, averaged over ranks, is
the single-process loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def positive_mask(logits: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """`[b, N]` True where row i meets its positive, column offset + i."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    mask = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    mask[rows, rows + offset] = True
    return mask


def amplified_probabilities(logits: torch.Tensor, alpha: float, offset: int = 0) -> torch.Tensor:
    """Pbar for rows of `logits` (the positive of row i in column offset + i)."""
    p = torch.exp(F.log_softmax(logits, dim=1))
    is_positive = positive_mask(logits, offset)
    positive = p[is_positive].unsqueeze(1)
    hardness = (p / positive.clamp_min(torch.finfo(p.dtype).tiny)).clamp(max=1.0)
    extra = torch.where(is_positive, torch.zeros_like(p), p * hardness)
    return p + alpha * (extra - is_positive * extra.sum(dim=1, keepdim=True))


class _EGACrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, alpha: float, offset: int) -> torch.Tensor:
        ctx.save_for_backward(logits)
        ctx.alpha, ctx.offset = alpha, offset
        return -F.log_softmax(logits, dim=1)[positive_mask(logits, offset)].mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (logits,) = ctx.saved_tensors
        p_bar = amplified_probabilities(logits, ctx.alpha, ctx.offset)
        one_hot = positive_mask(logits, ctx.offset).to(logits.dtype)
        return (p_bar - one_hot) * (grad_output / logits.shape[0]), None, None


def ega_cross_entropy(logits: torch.Tensor, alpha: float, offset: int = 0) -> torch.Tensor:
    """One direction of EGA InfoNCE over `[b, N]` logits whose row i has its positive in column offset + i."""
    if logits.ndim != 2 or not 0 <= offset <= logits.shape[1] - logits.shape[0]:
        raise ValueError(
            f"EGA needs a b x N logit matrix with the positives of its b rows at columns offset..offset+b-1 "
            f"inside its N columns, got {tuple(logits.shape)} at offset {offset}"
        )
    return _EGACrossEntropy.apply(logits, alpha, offset)


def ega_loss(similarity: torch.Tensor, temperature: torch.Tensor, alpha: float, same: torch.Tensor | None = None):
    """Symmetric EGA InfoNCE on a `[B, B]` similarity matrix.

    `same[i, j]` marks off-diagonal pairs that are not true negatives (two rows
    with the same answer text, say); they are removed from both softmaxes.
    """
    return sharded_ega_loss(similarity, similarity.T, temperature, alpha, same)


def sharded_ega_loss(
    rows: torch.Tensor,
    columns: torch.Tensor,
    temperature: torch.Tensor,
    alpha: float,
    same: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Symmetric EGA InfoNCE of the b items a rank owns, global items offset..offset+b-1.

    `rows` `[b, B]` scores the rank's queries against every candidate of the
    global batch, `columns` `[b, B]` its candidates against every query; `same`
    is the global `[B, B]` mask of pairs that are not negatives. With b = B
    and `columns = rows.T` this is the single-process loss.
    """
    row_logits, column_logits = contrastive_logits(rows, columns, temperature, same, offset)
    return symmetric_ega_loss(row_logits, column_logits, alpha, offset)


def contrastive_logits(
    rows: torch.Tensor,
    columns: torch.Tensor,
    temperature: torch.Tensor,
    same: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions' `[b, B]` logits as `sharded_ega_loss` takes them, pairs that are not negatives at -inf."""
    b = rows.shape[0]
    row_logits = rows / temperature
    column_logits = columns / temperature
    if same is not None:
        row_logits = _mask_non_negatives(row_logits, same[offset : offset + b], offset)
        column_logits = _mask_non_negatives(column_logits, same[:, offset : offset + b].T, offset)
    return row_logits, column_logits


def symmetric_ega_loss(
    row_logits: torch.Tensor, column_logits: torch.Tensor, alpha: float, offset: int = 0
) -> torch.Tensor:
    """The mean of both directions' EGA InfoNCE, on logits from `contrastive_logits`."""
    return 0.5 * (ega_cross_entropy(row_logits, alpha, offset) + ega_cross_entropy(column_logits, alpha, offset))


def hard_negative_share(logits: torch.Tensor, offset: int = 0, ratio: float = 0.5) -> torch.Tensor:
    """The share of true negatives j of row i with p_ij / p_ii > `ratio`: those EGA amplifies by more than
    1 + alpha * ratio. Tells whether a run's negatives are hard for the model when EGA would act, and how
    that moves with the temperature (a learned one can sharpen until no negative stays close)."""
    is_positive = positive_mask(logits, offset)
    positive = logits[is_positive].unsqueeze(1)
    negative = ~is_positive & torch.isfinite(logits)
    hard = negative & (logits - positive > math.log(ratio))
    return hard.sum() / negative.sum().clamp_min(1)


def _mask_non_negatives(logits: torch.Tensor, same: torch.Tensor, offset: int) -> torch.Tensor:
    return logits.masked_fill(same & ~positive_mask(logits, offset), float("-inf"))

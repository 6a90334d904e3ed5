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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def amplified_probabilities(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Pbar for rows of `logits` (positives on the diagonal)."""
    p = torch.exp(F.log_softmax(logits, dim=1))
    eye = torch.eye(p.shape[0], dtype=torch.bool, device=p.device)
    positive = p.diagonal().unsqueeze(1)
    hardness = (p / positive.clamp_min(torch.finfo(p.dtype).tiny)).clamp(max=1.0)
    extra = torch.where(eye, torch.zeros_like(p), p * hardness)
    return p + alpha * (extra - torch.diag_embed(extra.sum(dim=1)))


class _EGACrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(logits)
        ctx.alpha = alpha
        return -F.log_softmax(logits, dim=1).diagonal().mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (logits,) = ctx.saved_tensors
        p_bar = amplified_probabilities(logits, ctx.alpha)
        eye = torch.eye(logits.shape[0], dtype=logits.dtype, device=logits.device)
        return (p_bar - eye) * (grad_output / logits.shape[0]), None


def ega_cross_entropy(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """One direction of EGA InfoNCE over a square logit matrix."""
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"EGA needs a square B x B logit matrix, got {tuple(logits.shape)}")
    return _EGACrossEntropy.apply(logits, alpha)


def ega_loss(similarity: torch.Tensor, temperature: torch.Tensor, alpha: float, same: torch.Tensor | None = None):
    """Symmetric EGA InfoNCE on a `[B, B]` similarity matrix.

    `same[i, j]` marks off-diagonal pairs that are not true negatives (two rows
    with the same answer text, say); they are removed from both softmaxes.
    """
    logits = similarity / temperature
    if same is not None:
        off_diagonal = same & ~torch.eye(same.shape[0], dtype=torch.bool, device=same.device)
        logits = logits.masked_fill(off_diagonal, float("-inf"))
    return 0.5 * (ega_cross_entropy(logits, alpha) + ega_cross_entropy(logits.T, alpha))

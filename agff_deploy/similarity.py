"""AGFF fused similarity between multi-embedding items.

Each item is `[K+1, D]` (index 0 = global). Four pattern scores are fused:

    s_gg = <g_q, g_c>
    s_gf = smax_k <g_q, f_c^k>        (query global vs candidate fine)
    s_fg = smax_k <f_q^k, g_c>        (query fine vs candidate global)
    s_ff = smax_{k,l} <f_q^k, f_c^l>
    s    = t_f * logsumexp_p((s_p + b_p) / t_f)

smax_x is the smooth maximum t_in * log(mean(exp(x / t_in))): it never exceeds
the hard maximum and equals the plain dot product when K = 1, so the four
patterns stay on the same cosine scale. With K = 0 the score is plain cosine.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PATTERNS = ("global-global", "global-fine", "fine-global", "fine-fine")


def smooth_max(x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """t * log(mean(exp(x / t))) over the last axis."""
    return t * (torch.logsumexp(x / t, dim=-1) - math.log(x.shape[-1]))


def pattern_scores(q: torch.Tensor, c: torch.Tensor, t_in: float | torch.Tensor) -> torch.Tensor:
    """`[Nq, Nc, 4]` scores in the order of `PATTERNS`."""
    gq, fq = q[:, 0], q[:, 1:]
    gc, fc = c[:, 0], c[:, 1:]
    s_gg = gq @ gc.T
    s_gf = smooth_max(torch.einsum("qd,ckd->qck", gq, fc), t_in)
    s_fg = smooth_max(torch.einsum("qkd,cd->qck", fq, gc), t_in)
    s_ff = smooth_max(torch.einsum("qkd,cld->qckl", fq, fc).flatten(2), t_in)
    return torch.stack([s_gg, s_gf, s_fg, s_ff], dim=-1)


def fused_similarity(
    q: torch.Tensor,
    c: torch.Tensor,
    t_in: float | torch.Tensor,
    t_f: float | torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """`[Nq, K+1, D]` x `[Nc, K+1, D]` -> `[Nq, Nc]` fused AGFF similarity."""
    if q.shape[1:] != c.shape[1:]:
        raise ValueError(f"query items {tuple(q.shape[1:])} and candidate items {tuple(c.shape[1:])} differ")
    if q.shape[1] == 1:
        return q[:, 0] @ c[:, 0].T
    scores = pattern_scores(q, c, t_in)
    return t_f * torch.logsumexp((scores + bias) / t_f, dim=-1)


class FusedSimilarity(nn.Module):
    """The fusion with its learnable temperature t_f and pattern biases."""

    def __init__(self, t_in: float, t_f: float, pattern_bias: tuple[float, ...]) -> None:
        super().__init__()
        self.t_in = t_in
        self.log_t_f = nn.Parameter(torch.tensor(math.log(t_f)))
        self.pattern_bias = nn.Parameter(torch.tensor(pattern_bias, dtype=torch.float32))

    @property
    def t_f(self) -> torch.Tensor:
        return self.log_t_f.exp()

    def forward(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return fused_similarity(q, c, self.t_in, self.t_f, self.pattern_bias)

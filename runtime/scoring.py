"""The AGFF fused similarity in numpy, for runtimes without torch (same formula as agff_deploy.similarity)."""

from __future__ import annotations

import numpy as np


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    peak = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(peak, axis) + np.log(np.sum(np.exp(x - peak), axis=axis))


def _smooth_max(x: np.ndarray, t: float) -> np.ndarray:
    return t * (_logsumexp(x / t) - np.log(x.shape[-1]))


def fused_similarity(q: np.ndarray, c: np.ndarray, t_in: float, t_f: float, bias: np.ndarray) -> np.ndarray:
    """`[Nq, K+1, D]` x `[Nc, K+1, D]` -> `[Nq, Nc]`; plain cosine when K = 0.

    Every vector pair's product comes from one matrix product (BLAS), which is what makes the exact fused score
    over a large shortlist, or a whole corpus in chunks, affordable."""
    if q.shape[1:] != c.shape[1:]:
        raise ValueError(f"query items {q.shape[1:]} and candidate items {c.shape[1:]} differ")
    q, c = q.astype(np.float32, copy=False), c.astype(np.float32, copy=False)
    (nq, k1, d), nc = q.shape, len(c)
    if k1 == 1:
        return q[:, 0] @ c[:, 0].T
    products = (q.reshape(-1, d) @ c.reshape(-1, d).T).reshape(nq, k1, nc, k1).transpose(0, 2, 1, 3)
    s_gg = products[..., 0, 0]
    s_gf = _smooth_max(products[..., 0, 1:], t_in)
    s_fg = _smooth_max(products[..., 1:, 0], t_in)
    s_ff = _smooth_max(products[..., 1:, 1:].reshape(nq, nc, -1), t_in)
    patterns = np.stack([s_gg, s_gf, s_fg, s_ff], axis=-1) + np.asarray(bias, np.float32)
    return (t_f * _logsumexp(patterns / t_f)).astype(np.float32)

"""The AGFF fused similarity in numpy, for runtimes without torch (same formula as agff_deploy.similarity)."""

from __future__ import annotations

import numpy as np


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    peak = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(peak, axis) + np.log(np.sum(np.exp(x - peak), axis=axis))


def _smooth_max(x: np.ndarray, t: float) -> np.ndarray:
    return t * (_logsumexp(x / t) - np.log(x.shape[-1]))


def fused_similarity(q: np.ndarray, c: np.ndarray, t_in: float, t_f: float, bias: np.ndarray) -> np.ndarray:
    """`[Nq, K+1, D]` x `[Nc, K+1, D]` -> `[Nq, Nc]`; plain cosine when K = 0."""
    if q.shape[1:] != c.shape[1:]:
        raise ValueError(f"query items {q.shape[1:]} and candidate items {c.shape[1:]} differ")
    q, c = q.astype(np.float32, copy=False), c.astype(np.float32, copy=False)
    if q.shape[1] == 1:
        return q[:, 0] @ c[:, 0].T
    gq, fq, gc, fc = q[:, 0], q[:, 1:], c[:, 0], c[:, 1:]
    s_gg = gq @ gc.T
    s_gf = _smooth_max(np.einsum("qd,ckd->qck", gq, fc), t_in)
    s_fg = _smooth_max(np.einsum("qkd,cd->qck", fq, gc), t_in)
    s_ff = _smooth_max(np.einsum("qkd,cld->qckl", fq, fc).reshape(len(q), len(c), -1), t_in)
    patterns = np.stack([s_gg, s_gf, s_fg, s_ff], axis=-1) + np.asarray(bias, np.float32)
    return (t_f * _logsumexp(patterns / t_f)).astype(np.float32)

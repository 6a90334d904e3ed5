"""Metrics on score matrices, small enough to check by hand."""

from __future__ import annotations

import numpy as np


def mmvp_pair_correct(scores: np.ndarray) -> np.ndarray:
    """`scores[p, s, i]`: statement s of pair p against image i. A pair counts only if both statements
    choose their own image (MMVP-VLM's official rule)."""
    scores = np.asarray(scores)
    return (scores[:, 0, 0] > scores[:, 0, 1]) & (scores[:, 1, 1] > scores[:, 1, 0])


def recall_at_k(similarity: np.ndarray, k: int) -> float:
    """Rows are queries, the positive of row i is column i."""
    similarity = np.asarray(similarity)
    positive = similarity[np.arange(len(similarity)), np.arange(len(similarity))]
    rank = (similarity > positive[:, None]).sum(axis=1)
    return float((rank < k).mean())


def hit_at_1(scores: list[np.ndarray]) -> float:
    """Each entry scores one query's candidates; the first candidate is the positive."""
    if not scores:
        return float("nan")
    return float(np.mean([int(np.argmax(s) == 0) for s in scores]))

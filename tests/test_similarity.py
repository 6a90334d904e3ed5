import math

import pytest
import torch
import torch.nn.functional as F

from agff_deploy.similarity import PATTERNS, fused_similarity, smooth_max


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def smax_loop(values, t):
    return t * math.log(sum(math.exp(v / t) for v in values) / len(values))


def fused_pair(q, c, t_in, t_f, bias):
    """The AGFF fusion for one (query, candidate) pair, written out with loops."""
    g_q, f_q, g_c, f_c = q[0], q[1:], c[0], c[1:]
    dot = lambda a, b: float((a * b).sum())  # noqa: E731
    patterns = [
        dot(g_q, g_c),
        smax_loop([dot(g_q, f) for f in f_c], t_in),
        smax_loop([dot(f, g_c) for f in f_q], t_in),
        smax_loop([dot(a, b) for a in f_q for b in f_c], t_in),
    ]
    return t_f * math.log(sum(math.exp((s + b) / t_f) for s, b in zip(patterns, bias, strict=True)))


@pytest.mark.parametrize("nq,nc,k", [(3, 5, 2), (4, 2, 4)])
def test_batched_fusion_equals_per_pair_loop(nq, nc, k):
    q, c = unit(nq, k + 1, 8, seed=1), unit(nc, k + 1, 8, seed=2)
    bias = torch.tensor([0.1, -0.2, 0.05, 0.3], dtype=torch.float64)
    batched = fused_similarity(q, c, 0.07, 0.2, bias)
    loop = torch.tensor(
        [[fused_pair(q[i], c[j], 0.07, 0.2, bias.tolist()) for j in range(nc)] for i in range(nq)], dtype=torch.float64
    )
    torch.testing.assert_close(batched, loop, rtol=0, atol=1e-12)


def test_single_embedding_items_score_by_cosine():
    q, c = unit(3, 1, 8, seed=3), unit(4, 1, 8, seed=4)
    torch.testing.assert_close(fused_similarity(q, c, 0.05, 0.05, torch.zeros(4)), q[:, 0] @ c[:, 0].T)


def test_smooth_max_lies_between_mean_and_max_and_tightens_with_temperature():
    x = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    loose, tight = smooth_max(x, 1.0).item(), smooth_max(x, 0.01).item()
    assert x.mean().item() < loose < tight <= 0.9
    assert tight > 0.9 - 0.01 * math.log(3) - 1e-9


def test_a_pattern_bias_raises_the_score_toward_that_pattern():
    q, c = unit(2, 3, 8, seed=5), unit(2, 3, 8, seed=6)
    base = fused_similarity(q, c, 0.05, 0.05, torch.zeros(4))
    boosted = fused_similarity(q, c, 0.05, 0.05, torch.tensor([3.0, 0, 0, 0]))
    assert torch.all(boosted > base)
    torch.testing.assert_close(boosted, q[:, 0] @ c[:, 0].T + 3.0, rtol=0, atol=0.01)


def test_items_of_different_prompt_counts_are_rejected():
    with pytest.raises(ValueError, match="differ"):
        fused_similarity(unit(2, 3, 8), unit(2, 2, 8), 0.05, 0.05, torch.zeros(4))


def test_pattern_names_follow_query_then_candidate():
    assert PATTERNS == ("global-global", "global-fine", "fine-global", "fine-fine")

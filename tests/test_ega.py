import math

import pytest
import torch
import torch.nn.functional as F

from train.ega import amplified_probabilities, ega_cross_entropy, ega_loss, hard_negative_share


def logits(seed=0, n=8):
    return torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


def grad_of(fn, z):
    z = z.clone().requires_grad_()
    fn(z).backward()
    return z.grad


def test_alpha_zero_reproduces_autograd_infonce_gradient():
    for seed in (0, 1):
        z = logits(seed)
        ours = grad_of(lambda x: ega_cross_entropy(x, 0.0), z)
        autograd = grad_of(lambda x: F.cross_entropy(x, torch.arange(8)), z)
        assert (ours - autograd).abs().max().item() < 1e-15


def test_forward_value_is_plain_infonce_for_any_alpha():
    z = logits(2)
    expected = F.cross_entropy(z, torch.arange(8))
    assert torch.equal(ega_cross_entropy(z, 3.0), ega_cross_entropy(z, 0.0))
    # a mean of the same 8 log-probabilities, reduced by another kernel: the loss is ~3.7, where one rounding step is
    # 4.4e-16 (8.9e-16, 2 steps, seen with AVX-512 kernels): up to 8 steps of its size
    torch.testing.assert_close(ega_cross_entropy(z, 3.0), expected, rtol=8 * torch.finfo(torch.float64).eps, atol=0)


def test_each_gradient_row_sums_to_zero():
    grad = grad_of(lambda x: ega_cross_entropy(x, 2.0), logits(3))
    assert grad.sum(dim=1).abs().max().item() < 1e-15


def test_alpha_amplifies_a_negative_in_proportion_to_its_relative_hardness():
    z = torch.zeros(3, 3, dtype=torch.float64)
    z[0] = torch.tensor([2.0, 2.0 - 0.1, -1.0], dtype=torch.float64)  # row 0: one hard, one easy negative
    p = torch.softmax(z, dim=1)
    p_bar = amplified_probabilities(z, alpha=1.0)
    hard_ratio = (p_bar[0, 1] / p[0, 1]).item()
    easy_ratio = (p_bar[0, 2] / p[0, 2]).item()
    assert abs(hard_ratio - (1 + math.exp(-0.1))) < 1e-12  # r = p_01 / p_00 = e^-0.1
    assert abs(easy_ratio - (1 + math.exp(-3.0))) < 1e-12


def test_alpha_raises_the_hardest_negatives_share_of_the_gradient():
    z = torch.full((8, 8), -1.0, dtype=torch.float64)
    z.fill_diagonal_(2.0)
    z[0, 1] = 1.9  # row 0: one hard negative among six easy ones

    def hardest_share(alpha):
        row = grad_of(lambda x: ega_cross_entropy(x, alpha), z)[0]
        return (row[1] / row[1:].sum()).item()

    hard, easy = math.exp(1.9), math.exp(-1.0)
    r_hard, r_easy = math.exp(-0.1), math.exp(-3.0)
    assert abs(hardest_share(0.0) - hard / (hard + 6 * easy)) < 1e-12  # 0.752
    expected = hard * (1 + r_hard) / (hard * (1 + r_hard) + 6 * easy * (1 + r_easy))  # 0.846
    assert abs(hardest_share(1.0) - expected) < 1e-12


def test_symmetric_loss_averages_both_directions():
    s = logits(5) * 0.1
    t = torch.tensor(0.05, dtype=torch.float64)
    expected = 0.5 * (F.cross_entropy(s / t, torch.arange(8)) + F.cross_entropy(s.T / t, torch.arange(8)))
    torch.testing.assert_close(ega_loss(s, t, 1.0), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ega_loss(s, t, 1.0), ega_loss(s.T, t, 1.0), rtol=0, atol=1e-12)


def test_duplicate_candidates_get_no_gradient_as_negatives():
    s = logits(6) * 0.1
    same = torch.zeros(8, 8, dtype=torch.bool)
    same[0, 3] = same[3, 0] = True
    grad = grad_of(lambda x: ega_loss(x, torch.tensor(0.05, dtype=torch.float64), 1.0, same), s)
    assert grad[0, 3].item() == 0 and grad[3, 0].item() == 0
    assert grad[0, 4].item() != 0


def test_a_negative_within_half_the_positives_probability_counts_as_hard():
    # row 0: p_01 / p_00 = e^-0.5 > 0.5 (hard), p_02 / p_00 = e^-1 < 0.5 (easy); row 1: one hard of two;
    # row 2: its positive is lowest, both negatives hard
    z = torch.tensor([[2.0, 1.5, 1.0], [0.0, 1.0, 0.5], [3.0, 3.0, 0.0]])
    assert hard_negative_share(z).item() == pytest.approx(4 / 6)


def test_masked_pairs_are_neither_hard_nor_counted_as_negatives():
    z = torch.tensor([[2.0, 1.9, float("-inf")], [0.0, 1.0, -5.0]])  # hard: only (0, 1), of 3 negatives
    assert hard_negative_share(z).item() == pytest.approx(1 / 3)


def test_hardness_is_measured_against_each_rows_own_positive_column():
    z = torch.tensor([[4.8, 5.0, 2.0], [1.0, 0.0, 5.0]])  # a rank's rows 1 and 2 of a batch of 3: offset 1
    assert hard_negative_share(z, offset=1).item() == pytest.approx(1 / 4)  # 3 / 4 were the diagonal its positives

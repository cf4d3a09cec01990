"""Loss values against hand computation, including the lecture's worked example."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from slimtorch.data import UNLABELED
from slimtorch.distill import LOSSES, DistillConfig
from slimtorch.distill.losses import (
    feature_mse,
    kd_loss,
    kl_div,
    mix_outputs,
    mix_soft_targets,
    soft_cross_entropy,
)
from slimtorch.train.losses import labeled_cross_entropy_rows

P = [0.05, 0.3, 0.2, 0.005]  # the lecture's softened teacher probabilities (they do not sum to 1)
Q = [0.1, 0.45, 0.30, 0.15]  # the student's softened predictions


def test_lecture_worked_example_as_written() -> None:
    """L = −Σ p log q on the slide's numbers, unnormalised as the slide computes it."""
    by_hand = -(0.05 * math.log(0.1) + 0.3 * math.log(0.45) + 0.2 * math.log(0.30) + 0.005 * math.log(0.15))
    assert by_hand == pytest.approx(0.60496, abs=1e-5)
    assert soft_cross_entropy(torch.tensor(P, dtype=torch.float64), torch.tensor(Q, dtype=torch.float64)).item() == pytest.approx(by_hand, rel=1e-12)


def test_lecture_example_normalised_kl() -> None:
    """With p normalised to a distribution, KL(p‖q) = CE(p, q) − H(p), each summed by hand."""
    total = sum(P)
    p = [v / total for v in P]
    ce = -sum(pi * math.log(qi) for pi, qi in zip(p, Q))
    entropy = -sum(pi * math.log(pi) for pi in p)
    kl = kl_div(torch.tensor(p, dtype=torch.float64), torch.log(torch.tensor(Q, dtype=torch.float64))).item()
    assert kl == pytest.approx(ce - entropy, rel=1e-12)
    assert kl == pytest.approx(0.13042, abs=1e-5)


def test_kd_loss_matches_formula_by_hand() -> None:
    """λ·CE(y, softmax(z_s)) + (1−λ)·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), spelled out element by element."""
    z_s, z_t, label, t, lam = [1.0, 2.0, 0.5], [0.2, 3.0, -1.0], 1, 2.0, 0.3

    def softmax(z: list[float], temp: float) -> list[float]:
        e = [math.exp(v / temp) for v in z]
        return [v / sum(e) for v in e]

    q1, p_t, q_t = softmax(z_s, 1.0), softmax(z_t, t), softmax(z_s, t)
    expected = lam * -math.log(q1[label]) + (1 - lam) * t * t * sum(p * math.log(p / q) for p, q in zip(p_t, q_t))
    cfg = DistillConfig(temperature=t, alpha=lam)
    soft = mix_soft_targets([torch.tensor([z_t], dtype=torch.float64)], [1.0], t)
    got = kd_loss(torch.tensor([z_s], dtype=torch.float64), soft, torch.tensor([label]), cfg)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_kd_matches_torch_kl_div() -> None:
    torch.manual_seed(0)
    z_s, z_t = torch.randn(8, 10), torch.randn(8, 10)
    cfg = DistillConfig(temperature=4.0, alpha=0.0)
    ours = kd_loss(z_s, F.softmax(z_t / 4, -1), torch.full((8,), UNLABELED), cfg).mean()
    ref = F.kl_div(F.log_softmax(z_s / 4, -1), F.softmax(z_t / 4, -1), reduction="batchmean") * 16
    torch.testing.assert_close(ours, ref)


def test_t_squared_keeps_gradient_magnitude() -> None:
    """Soft-target gradients scale as 1/T²; multiplying by T² keeps them comparable across T.

    In the high-temperature limit ∂KL/∂z_s ≈ (z_s − z_t)/(K·T²) (zero-mean logits), so the T²-scaled
    gradient tends to (z_s − z_t)/K for every large T.
    """
    torch.manual_seed(0)
    z_t = torch.randn(1, 5)
    z_t -= z_t.mean()
    z_s0 = torch.randn(1, 5)
    z_s0 -= z_s0.mean()
    limit = (z_s0 - z_t) / 5
    norms_unscaled = []
    for t in (20.0, 40.0, 80.0, 160.0):
        z_s = z_s0.clone().requires_grad_(True)
        cfg = DistillConfig(temperature=t, alpha=0.0)
        kd_loss(z_s, F.softmax(z_t / t, -1), torch.tensor([UNLABELED]), cfg).sum().backward()
        torch.testing.assert_close(z_s.grad, limit, rtol=0.1, atol=5e-3)
        norms_unscaled.append(z_s.grad.norm().item() / t**2)
    ratios = [a / b for a, b in itertools.pairwise(norms_unscaled)]
    assert all(r == pytest.approx(4.0, rel=0.1) for r in ratios)  # halving 1/T² ⇒ ×4 each doubling of T


def test_unlabeled_examples_teach_only_through_soft_targets() -> None:
    z_s = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([UNLABELED] * 4)
    ce = labeled_cross_entropy_rows(z_s, labels)
    assert torch.equal(ce, torch.zeros(4))
    only_labels = kd_loss(z_s, F.softmax(torch.randn(4, 3), -1), labels, DistillConfig(alpha=1.0))
    only_labels.sum().backward()
    assert torch.equal(z_s.grad, torch.zeros_like(z_s))


def test_labeled_ce_rows_average_to_the_mean_over_labeled_rows() -> None:
    z = torch.randn(5, 4)
    labels = torch.tensor([2, UNLABELED, 0, UNLABELED, 3])
    got = labeled_cross_entropy_rows(z, labels)
    keep = labels != UNLABELED
    assert torch.equal(got[~keep], torch.zeros(2))
    torch.testing.assert_close(got.mean(), F.cross_entropy(z[keep], labels[keep]))  # mean over the 3 labeled rows


def test_kd_loss_weighs_labels_as_a_mean_over_labeled_rows_by_hand() -> None:
    """alpha·CE + (1 − alpha)·T²·KL on a batch of 4 with one labeled row, computed term by term."""
    z_s = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])  # teacher's softened targets
    labels = torch.tensor([0, UNLABELED, UNLABELED, UNLABELED])
    t, alpha = 2.0, 0.25
    ce_row0 = math.log(1 + math.exp(-2.0))  # −log softmax([2, 0])[0]
    kls = []
    for zs, pt in zip(z_s.tolist(), p.tolist()):
        ez = [math.exp(v / t) for v in zs]
        q = [e / sum(ez) for e in ez]
        kls.append(sum(a * math.log(a / b) for a, b in zip(pt, q)))
    want = alpha * ce_row0 + (1 - alpha) * t * t * sum(kls) / 4  # CE over 1 labeled row, KL over all 4
    got = kd_loss(z_s, p, labels, DistillConfig(temperature=t, alpha=alpha)).mean()
    assert got.item() == pytest.approx(want, rel=1e-6)
    # the old whole-batch average would have weighed the labeled CE by 1/4
    assert got.item() != pytest.approx(alpha * ce_row0 / 4 + (1 - alpha) * t * t * sum(kls) / 4, rel=1e-3)


def test_multi_teacher_soft_targets_are_weighted_average() -> None:
    a, b = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 2.0]])
    mixed = mix_soft_targets([a, b], [3.0, 1.0], temperature=2.0)
    expected = 0.75 * F.softmax(a / 2, -1) + 0.25 * F.softmax(b / 2, -1)
    torch.testing.assert_close(mixed, expected)
    assert mixed.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(mix_outputs([a, b], [1.0, 1.0]), (a + b) / 2)


def test_mse_and_cosine_by_hand() -> None:
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    cfg = DistillConfig(loss="mse")
    torch.testing.assert_close(LOSSES.get("mse")(s, t, torch.zeros(2), cfg), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(LOSSES.get("cosine")(s, t, torch.zeros(2), cfg), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(feature_mse(s, t), torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_per_example_and_differentiable(name: str) -> None:
    torch.manual_seed(0)
    z_s = torch.randn(6, 10, requires_grad=True)
    target = F.softmax(torch.randn(6, 10), -1) if name == "kd" else torch.randn(6, 10)
    out = LOSSES.get(name)(z_s, target, torch.tensor([0, 1, UNLABELED, 3, 4, UNLABELED]), DistillConfig(loss=name))
    assert out.shape == (6,)
    assert torch.isfinite(out).all()
    out.mean().backward()
    assert torch.isfinite(z_s.grad).all() and z_s.grad.abs().sum() > 0


def test_unknown_loss_name_suggests_closest() -> None:
    with pytest.raises(ValueError, match="Did you mean 'cosine'"):
        LOSSES.get("cosin")


@settings(max_examples=40, deadline=None)
@given(st.floats(0.5, 20.0), st.floats(0.0, 1.0))
def test_kd_is_non_negative_and_zero_when_student_equals_teacher(t: float, alpha: float) -> None:
    torch.manual_seed(1)
    z = torch.randn(3, 5, dtype=torch.float64)
    cfg = DistillConfig(temperature=t, alpha=alpha)
    same = kd_loss(z, F.softmax(z / t, -1), torch.full((3,), UNLABELED), cfg)
    assert torch.allclose(same, torch.zeros(3, dtype=torch.float64), atol=1e-10)
    other = kd_loss(z, F.softmax(torch.randn(3, 5, dtype=torch.float64) / t, -1), torch.tensor([0, 1, 2]), cfg)
    assert (other >= -1e-12).all()

"""The labeled-rows cross-entropy against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from slimtorch.data import UNLABELED
from slimtorch.train import labeled_cross_entropy, labeled_cross_entropy_rows


def test_mean_over_labeled_rows_by_hand():
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    labels = torch.tensor([0, UNLABELED, 1, UNLABELED])
    ce0 = -math.log(math.e / (math.e + 2))  # row 0, label 0
    ce2 = -math.log(math.e**2 / (math.e**2 + 2))  # row 2, label 1
    assert labeled_cross_entropy(logits, labels).item() == pytest.approx((ce0 + ce2) / 2, rel=1e-6)
    rows = labeled_cross_entropy_rows(logits, labels)
    assert rows.tolist() == pytest.approx([ce0 * 2, 0.0, ce2 * 2, 0.0], rel=1e-6)  # each labeled row carries B / n_labeled


def test_no_labels_gives_zero_with_a_gradient_path():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = labeled_cross_entropy(logits, torch.full((3,), UNLABELED))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_fully_labeled_batch_is_plain_cross_entropy():
    logits, labels = torch.randn(6, 5), torch.randint(0, 5, (6,))
    torch.testing.assert_close(labeled_cross_entropy(logits, labels), torch.nn.functional.cross_entropy(logits, labels))

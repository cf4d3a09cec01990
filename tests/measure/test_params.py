"""Parameter and nonzero counts on hand-made masks with known answers."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize, prune

from slimtorch.measure import count_nonzero, count_params


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def test_counts_of_a_plain_linear():
    layer = nn.Linear(5, 3)
    nn.init.ones_(layer.weight), nn.init.ones_(layer.bias)
    assert count_params(layer) == 18
    assert count_nonzero(layer) == 18


def test_hand_made_zeros_are_counted():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 3.0, 4.0]]))
    assert count_nonzero(layer) == 4


def test_parametrized_mask_counts_as_zeros_and_original_is_not_double_counted():
    layer = nn.Linear(4, 2, bias=False)
    nn.init.ones_(layer.weight)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    parametrize.register_parametrization(layer, "weight", _Mask(mask))
    assert torch.count_nonzero(layer.parametrizations.weight.original) == 8  # the raw weight is dense
    assert count_params(layer) == 8
    assert count_nonzero(layer) == 4


def test_torch_prune_mask_counts_as_zeros():
    layer = nn.Linear(10, 10, bias=False)
    nn.init.ones_(layer.weight)
    prune.l1_unstructured(layer, "weight", amount=30)
    assert count_params(layer) == 100
    assert count_nonzero(layer) == 70


def test_tied_weights_count_once():
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    assert count_params(nn.Sequential(a, b)) == 16


def test_dynamic_int8_weights_are_counted():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    assert count_params(q) == count_params(model) == 8 * 6 + 6 + 6 * 2 + 2


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), seed=st.integers(0, 2**16), p=st.floats(0.0, 1.0))
def test_nonzeros_equal_mask_ones(rows, cols, seed, p):
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(rows, cols, generator=gen) < p).float()
    layer = nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(rows, cols, generator=gen) + 0.5)  # no accidental zeros
    parametrize.register_parametrization(layer, "weight", _Mask(mask))
    assert count_nonzero(layer) == int(mask.sum())
    assert count_params(layer) == rows * cols

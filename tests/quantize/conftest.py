"""A model whose int8 error is dominated by outlier input channels, shared by the smoothing and dynamic-int8 QAT tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class _OutlierChannels(nn.Module):
    """Two of 64 input features 50× larger than the rest, as in the outlier dimensions of transformers:
    one per-tensor int8 range must cover them."""

    gain: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        gain = torch.ones(64)
        gain[[5, 40]] = 50.0
        self.register_buffer("gain", gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.gain


@pytest.fixture()
def outlier_mlp() -> nn.Module:
    """An MLP on digits (64 inputs) behind the outlier channels; seeded, so every test gets the same weights."""
    torch.manual_seed(0)
    return nn.Sequential(_OutlierChannels(), nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 10)).eval()

"""A user's own model and data, plugged into slimtorch with `module:function` references.

Run from the project root: `slimtorch compress examples/user_model.yaml`. The data factory returns
torch Datasets of (x, y); the model factory returns an nn.Module. The recipe's `args` are passed as
keyword arguments.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset


def load_wine_data(seed: int = 0) -> dict[str, TensorDataset]:
    """scikit-learn's wine recognition data (178 samples, 13 features, 3 classes), standardised."""
    from sklearn.datasets import load_wine

    bunch = load_wine()
    x = bunch.data.astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = torch.from_numpy(x[order]), torch.from_numpy(bunch.target[order]).long()
    parts = {"train": slice(0, 110), "val": slice(110, 134), "test": slice(134, None)}
    return {name: TensorDataset(x[s], y[s]) for name, s in parts.items()}


class WineNet(nn.Module):
    """A user-defined classifier: two hidden layers with a skip from the input to the head."""

    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(13, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(width + 13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.body(x), x], dim=-1))


def build_wine_net(width: int = 256) -> WineNet:
    return WineNet(width)

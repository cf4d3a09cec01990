"""User code that recipes in the bad-input catalogue point at (`user_code:<function>`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def _split(n: int, classes: int = 3, features: int = 8, *, nan: bool = False, label_offset: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, features, generator=g)
    if nan:
        x[0, 0] = float("nan")
    y = torch.arange(n) % classes + label_offset
    return TensorDataset(x, y)


def tiny(classes: int = 3) -> dict:
    """A small, valid 3-class dataset of 8 features."""
    return {"train": _split(48, classes), "val": _split(24, classes), "test": _split(24, classes)}


def empty_val() -> dict:
    return {"train": _split(48), "val": TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)), "test": _split(24)}


def negative_labels() -> dict:
    return {"train": _split(48, label_offset=-3), "val": _split(24), "test": _split(24)}


def nan_inputs() -> dict:
    return {"train": _split(48, nan=True), "val": _split(24), "test": _split(24)}


class Overflowing(nn.Module):
    """A valid-looking model whose first training step overflows to NaN (a learning rate or scaling bug of the user's)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return out * (float("nan") if self.training else 1.0)


def overflowing(classes: int = 3) -> nn.Module:
    return Overflowing(classes)


def not_a_dict() -> list:
    return [1, 2, 3]


class FixedProjection(nn.Module):
    """A 'model' with no parameters: the first ``classes`` input features are its logits."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, : self.classes]


def no_params(classes: int = 3) -> nn.Module:
    return FixedProjection(classes)


def not_a_module() -> str:
    return "a string"


def no_memory(classes: int = 3) -> nn.Module:
    """A factory that runs out of memory with an empty message, as a C extension's bare MemoryError() does."""
    raise MemoryError()


def unlabeled_in_test() -> dict:
    """Valid train and val; two test examples labeled -1 (the 'unlabeled' marker), which scoring would count as wrong."""
    test = _split(24)
    test.tensors[1][[3, 7]] = -1
    return {"train": _split(48), "val": _split(24), "test": test}

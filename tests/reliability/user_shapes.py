"""User code in the shapes people really write (`user_shapes:<function>`): data sources and models.

Each data source returns the same small 3-class problem (8 features) in a different container or
item shape; each model is the same small MLP whose forward returns a different kind of output.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

CLASSES, FEATURES = 3, 8


def _xy(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable data: class c shifts feature c by +3, so a small MLP learns it in a few epochs."""
    g = torch.Generator().manual_seed(seed + n)
    y = torch.arange(n) % CLASSES
    x = torch.randn(n, FEATURES, generator=g)
    x[torch.arange(n), y] += 3.0
    return x, y


class Items(Dataset):
    """A map-style dataset over a list of items, whatever they are."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def _splits(make) -> dict:
    """``make(x, y)`` -> one split, for train (96), val (48) and test (48)."""
    return {name: make(*_xy(n, seed)) for name, n, seed in (("train", 96, 0), ("val", 48, 1), ("test", 48, 2))}


# -- data in shapes that are accepted --------------------------------------------------------------

def dict_items() -> dict:
    """Hugging Face datasets style: {"features": x, "label": y}."""
    return _splits(lambda x, y: Items([{"features": xi, "label": int(yi)} for xi, yi in zip(x, y)]))


def float_labels() -> dict:
    """Labels stored as whole-number floats, in a TensorDataset and as python floats."""
    out = _splits(lambda x, y: TensorDataset(x, y.float()))
    out["test"] = Items([(xi, float(yi)) for xi, yi in zip(*_xy(48, 2))])
    return out


def float64_inputs() -> dict:
    """numpy float64 features (the default dtype of numpy), as tensors and as arrays."""
    out = _splits(lambda x, y: TensorDataset(x.double(), y))
    out["test"] = Items([(xi.numpy().astype(np.float64), int(yi)) for xi, yi in zip(*_xy(48, 2))])
    return out


def array_pairs() -> dict:
    """scikit-learn style: (X, y) numpy arrays (float64 features, int64 labels), and a pair of tensors;
    the transfer split is inputs alone."""
    out = _splits(lambda x, y: (x.numpy().astype(np.float64), y.numpy()))
    out["test"] = _xy(48, 2)
    out["transfer"] = _xy(64, 3)[0].numpy().astype(np.float64)
    return out


# -- data in shapes that are refused ---------------------------------------------------------------

def none_split() -> dict:
    return {**_splits(TensorDataset), "val": None}


def raw_tensor_split() -> dict:
    x, _ = _xy(96)
    return {**_splits(TensorDataset), "train": x}


def unequal_pair_split() -> dict:
    x, y = _xy(96)
    return {**_splits(TensorDataset), "train": (x, y[:90])}


def string_label_arrays() -> dict:
    x, y = _xy(96)
    return {**_splits(TensorDataset), "train": (x.numpy(), np.array(["cat", "dog", "emu"])[y.numpy()])}


class Stream(IterableDataset):
    def __iter__(self):
        return iter(zip(*_xy(96)))


def iterable_split() -> dict:
    return {**_splits(TensorDataset), "train": Stream()}


def inputs_only() -> dict:
    """Items that are bare input tensors, with no label."""
    return {**_splits(TensorDataset), "train": Items(list(_xy(96)[0]))}


def dict_items_no_label() -> dict:
    return _splits(lambda x, y: Items([{"image": xi, "target": int(yi)} for xi, yi in zip(x, y)]))


def string_labels() -> dict:
    names = ["cat", "dog", "bird"]
    return _splits(lambda x, y: Items([(xi, names[int(yi)]) for xi, yi in zip(x, y)]))


def fractional_labels() -> dict:
    return _splits(lambda x, y: TensorDataset(x, y.float() + 0.5))


def one_hot_labels() -> dict:
    return _splits(lambda x, y: TensorDataset(x, nn.functional.one_hot(y, CLASSES)))


def ragged_inputs() -> dict:
    """Item 5 of train has 7 features instead of 8."""
    def make(x, y):
        items = [(xi, int(yi)) for xi, yi in zip(x, y)]
        if len(items) == 96:
            items[5] = (items[5][0][:7], items[5][1])
        return Items(items)

    return _splits(make)


def val_other_shape() -> dict:
    return {**_splits(TensorDataset), "val": TensorDataset(torch.randn(48, 6), torch.arange(48) % CLASSES)}


def takes_size(size: int = 96) -> dict:
    return _splits(TensorDataset)


# -- models whose forward returns other things than a Tensor -----------------------------------------

class Net(nn.Module):
    """An 8-16-C MLP; ``wrap`` turns its logits into what the forward returns."""

    def __init__(self, wrap, classes: int = CLASSES) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU())
        self.head = nn.Linear(16, classes)
        self.wrap = wrap

    def forward(self, x: torch.Tensor):
        hidden = self.body(x)
        return self.wrap(self.head(hidden), hidden)


def tensor_out(classes: int = CLASSES) -> nn.Module:
    return Net(lambda logits, hidden: logits, classes)


def tuple_out() -> nn.Module:
    return Net(lambda logits, hidden: (logits, hidden))


def dict_out() -> nn.Module:
    return Net(lambda logits, hidden: {"logits": logits, "hidden": hidden})


def model_output_out() -> nn.Module:
    from transformers.modeling_outputs import SequenceClassifierOutput

    return Net(lambda logits, hidden: SequenceClassifierOutput(logits=logits, hidden_states=(hidden,)))


def dict_without_logits() -> nn.Module:
    return Net(lambda logits, hidden: {"scores": logits})


def two_classes() -> nn.Module:
    """A classifier with 2 outputs, for data with 3 classes."""
    return tensor_out(classes=2)


class Mix(nn.Module):
    """A custom layer with its own square weight applied by matmul: Torch-Pruning has no rule for it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.eye(width) + 0.01 * torch.randn(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.mix


class WithCustomLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(FEATURES, 16)
        self.mix = Mix(16)
        self.b = nn.Linear(16, 16)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.mix(self.a(x))))))


def custom_layer() -> nn.Module:
    return WithCustomLayer()

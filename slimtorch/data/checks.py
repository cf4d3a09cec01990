"""Check a data source's splits up front, and accept the few other shapes a mature tool accepts.

A split is a map-style torch ``Dataset`` (``len()`` and ``[i]``) of ``(x, y)`` pairs: ``x`` a tensor
(or a dict of tensors, passed to the model as keyword arguments), ``y`` a class index. Also accepted, and documented:

- **dict items** with a ``"label"`` or ``"labels"`` key (the Hugging Face ``datasets`` convention):
  that entry is ``y``; the other entries are ``x`` (one entry: its value; several: a dict, passed to
  the model as keyword arguments);
- **float labels that are whole numbers** (``3.0``): used as the integer class index;
- **float64 inputs**: cast to float32, the dtype of the model's weights;
- **an ``(x, y)`` pair of arrays or tensors** of equal length (scikit-learn style, numpy or torch):
  wrapped as ``TensorDataset(x, y)``.

Everything else (``None``, raw tensors, iterable-only datasets, items that are not pairs, string,
fractional or one-hot labels, inputs of different shapes without a ``collate_fn``) raises a
:class:`~slimtorch.errors.DataError` that names the split, the item and the shape found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from slimtorch.data.bundle import dataset_len
from slimtorch.errors import DataError

LABEL_KEYS = ("label", "labels")
PAIR_HINT = "slimtorch expects each item to be an (x, y) pair: an input tensor and a class index"


def describe(value: Any) -> str:
    """``a Tensor of shape (8,)``, ``a str 'cat'``: what was found, for messages."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} Tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} numpy array of shape {value.shape}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {sorted(map(str, value))}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} elements"
    return f"a {type(value).__name__} {value!r}"[:100]


class Examples(Dataset):
    """A view of a dataset whose items become ``(x, y)`` pairs (dict items, float labels, float64 inputs)."""

    def __init__(self, dataset: Dataset, label_key: str | None = None, cast_label: bool = False, cast_input: bool = False) -> None:
        self.dataset, self.label_key, self.cast_label, self.cast_input = dataset, label_key, cast_label, cast_input

    def __len__(self) -> int:
        return dataset_len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        item = self.dataset[i]
        if self.label_key is not None:
            inputs = {k: v for k, v in item.items() if k != self.label_key}
            x, y = (next(iter(inputs.values())) if len(inputs) == 1 else inputs), item[self.label_key]
        else:
            x, y = item
        if self.cast_input:
            x = torch.as_tensor(x, dtype=torch.float32)
        if self.cast_label:
            y = int(y)
        return x, y


def check_container(source: str, split: str, dataset: Any) -> None:
    """Raise unless ``dataset`` is a non-empty map-style dataset."""
    where = f"data source {source!r} returned"
    if dataset is None:
        raise DataError(f"{where} None for the {split!r} split; every split (train, val, test) must be a torch Dataset of (x, y) pairs.")
    raw = isinstance(dataset, (Tensor, np.ndarray)) or (
        isinstance(dataset, (tuple, list)) and 0 < len(dataset) <= 2 and all(isinstance(d, (Tensor, np.ndarray)) for d in dataset))
    if raw:
        found = describe(dataset)
        if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
            found += f" of lengths {len(dataset[0])} and {len(dataset[1])}"
        raise DataError(f"{where} {found} for the {split!r} split, not a Dataset; return an (inputs, labels) pair of "
                        "equal length or torch.utils.data.TensorDataset(x, y).")
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise DataError(f"{where} a {type(dataset).__name__} for the {split!r} split; slimtorch needs a map-style Dataset "
                        "with len() and __getitem__ (e.g. torch.utils.data.TensorDataset(x, y)), not an iterable-only one.")
    if len(dataset) == 0:
        raise DataError(f"{where} an empty {split!r} split; every split needs examples.")


def _label_problem(y: Any) -> tuple[str | None, bool]:
    """(what is wrong with a classification label or None, whether it must be cast to int)."""
    if isinstance(y, (Tensor, np.ndarray)):
        if (y.size if isinstance(y, np.ndarray) else y.numel()) != 1:
            return (f"{describe(y)} (one-hot or multi-label?); give the class index instead, e.g. y.argmax()", False)
        y = y.item()
    if isinstance(y, bool) or not isinstance(y, (int, float, np.integer, np.floating)):
        return (f"{describe(y)}; map class names to indices 0..C-1 (e.g. {{'cat': 0, 'dog': 1}})", False)
    if isinstance(y, (float, np.floating)):
        if not float(y).is_integer():
            return (f"{y!r}, a fraction; classification needs whole class indices 0..C-1 (slimtorch does not do regression)", False)
        return None, True
    return None, False


def _tensor_split(dataset: TensorDataset, task: str) -> TensorDataset:
    """Check a TensorDataset's labels once for the whole tensor; cast float64 inputs and whole-number float labels."""
    if len(dataset.tensors) != 2:
        raise DataError(f"a TensorDataset of {len(dataset.tensors)} tensors; {PAIR_HINT}: TensorDataset(x, y).")
    x, y = dataset.tensors
    if task == "classification":
        if y.dim() != 1:
            raise DataError(f"labels are a Tensor of shape {tuple(y.shape)} (one-hot or multi-label?); "
                            "give class indices of shape (N,), e.g. y.argmax(1).")
        if y.is_floating_point():
            if not torch.equal(y, y.round()):
                bad = y[y != y.round()][0].item()
                raise DataError(f"label {bad!r} is a fraction; classification needs whole class indices 0..C-1 "
                                "(slimtorch does not do regression).")
            y = y.long()
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        nonfinite = ~torch.isfinite(x.reshape(len(x), -1))
        rows = nonfinite.any(1).nonzero().flatten()
        kinds = " and ".join(k for k, f in (("NaN", torch.isnan), ("inf", torch.isinf)) if bool(f(x).any()))
        raise DataError(f"inputs hold {int(nonfinite.sum())} non-finite value(s) ({kinds}) in {len(rows)} example(s), the first is item "
                        f"{int(rows[0])}; drop or impute them (e.g. sklearn.impute.SimpleImputer) before training.")
    if x.dtype == torch.float64:
        x = x.float()
    return dataset if (x is dataset.tensors[0] and y is dataset.tensors[1]) else TensorDataset(x, y)


def _array_pair(dataset: Any) -> TensorDataset | None:
    """``(x, y)`` as two arrays or tensors of equal length -> ``TensorDataset(x, y)``; anything else -> None."""
    if not (isinstance(dataset, (tuple, list)) and len(dataset) == 2):
        return None
    x, y = dataset
    if not all(isinstance(a, (Tensor, np.ndarray)) and a.ndim >= 1 for a in (x, y)) or len(x) != len(y) or len(x) == 0:
        return None
    if isinstance(y, np.ndarray) and y.dtype.kind not in "biuf":
        raise DataError(f"labels are a numpy array of dtype {y.dtype} (e.g. {y.flat[0].item()!r}); map class names to indices "
                        "0..C-1 (e.g. {'cat': 0, 'dog': 1}).")
    return TensorDataset(torch.as_tensor(x), torch.as_tensor(y))


def transfer_split(source: str, dataset: Any) -> Any:
    """The optional unlabeled ``transfer`` split: a Dataset, an ``(x, y)`` pair, or inputs alone (an array or tensor)."""
    if isinstance(dataset, (Tensor, np.ndarray)) and dataset.ndim >= 1 and len(dataset) > 0:
        inputs = torch.as_tensor(dataset)
        return TensorDataset(inputs.float() if inputs.dtype == torch.float64 else inputs)
    try:
        dataset = _array_pair(dataset) or dataset
    except DataError as exc:
        raise DataError(f"data source {source!r}, 'transfer' split: {exc}") from None
    check_container(source, "transfer", dataset)
    return dataset


def check_split(source: str, split: str, dataset: Any, task: str, collate_fn: Callable | None) -> Dataset:
    """Check one split from its first item; returns it, or a view that makes its items ``(x, y)`` pairs.

    Raises:
        DataError: naming the split, what its first item is, and what is expected.
    """
    try:
        dataset = _array_pair(dataset) or dataset
    except DataError as exc:
        raise DataError(f"data source {source!r}, {split!r} split: {exc}") from None
    check_container(source, split, dataset)
    where = f"data source {source!r}: item 0 of the {split!r} split"
    if isinstance(dataset, TensorDataset):
        try:
            return _tensor_split(dataset, task)
        except DataError as exc:
            raise DataError(f"data source {source!r}, {split!r} split: {exc}") from None
    item = dataset[0]
    if collate_fn is not None:  # the user's collate understands the items; check what it makes of them
        batch = collate_fn([item])
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise DataError(f"{where}: collate_fn returned {describe(batch)}; it must return an (x, y) batch.")
        return dataset
    label_key = None
    if isinstance(item, Mapping):
        label_key = next((k for k in LABEL_KEYS if k in item), None)
        if label_key is None or len(item) < 2:
            raise DataError(f"{where} is {describe(item)} with no input and 'label' (or 'labels') entries; {PAIR_HINT}, "
                            "or a dict with a 'label' entry and the inputs.")
        inputs = [v for k, v in item.items() if k != label_key]
        x = inputs[0] if len(inputs) == 1 else None  # several inputs: keyword arguments of the model
        y = item[label_key]
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        x, y = item
    else:
        raise DataError(f"{where} is {describe(item)}; {PAIR_HINT}, e.g. return (x, y) from __getitem__.")
    cast_label = False
    if task == "classification":
        problem, cast_label = _label_problem(y)
        if problem:
            raise DataError(f"{where} has label {problem}.")
    if isinstance(x, Mapping):  # keyword inputs ({"input_ids", "attention_mask"}): the default collate stacks each entry
        bad = {str(k): v for k, v in x.items() if not isinstance(v, (Tensor, np.ndarray))}
        if bad:
            key, value = next(iter(bad.items()))
            raise DataError(f"{where} has a dict input whose entry {key!r} is {describe(value)}; without a collate_fn every "
                            "entry must be a tensor (or return a 'collate_fn' that turns a list of items into an (x, y) batch).")
        x = None  # nothing to cast: the model takes the entries as they are
    elif x is not None and not isinstance(x, (Tensor, np.ndarray)):
        raise DataError(f"{where} has input {describe(x)}; without a collate_fn inputs must be tensors or a dict of tensors "
                        "(or return a 'collate_fn' that turns a list of items into an (x, y) batch).")
    cast_input = x is not None and x.dtype in (torch.float64, np.float64)
    if label_key is None and not cast_label and not cast_input:
        return dataset
    return Examples(dataset, label_key=label_key, cast_label=cast_label, cast_input=cast_input)


def input_shape(item: Any) -> tuple[int, ...] | None:
    """The shape of an item's input ``x`` when it is a tensor or array, else None."""
    x = item[0] if isinstance(item, (tuple, list)) else item
    return tuple(x.shape) if isinstance(x, (Tensor, np.ndarray)) else None


def check_same_shapes(source: str, splits: dict[str, Dataset]) -> None:
    """Without a collate_fn, every example is stacked into a batch: their inputs must share one shape."""
    shapes = {name: input_shape(ds[0]) for name, ds in splits.items()}
    first_name, first = next(iter(shapes.items()))
    for name, shape in shapes.items():
        if shape != first:
            raise DataError(
                f"data source {source!r}: examples have different shapes: item 0 of {first_name!r} has input shape {first} "
                f"but item 0 of {name!r} has {shape}; without a collate_fn every input must have the same shape. "
                "Pad or crop them, or return a 'collate_fn' that batches them."
            )


def class_labels(source: str, split: str, dataset: Dataset, *, same_shapes: bool) -> np.ndarray:
    """Every label of a checked split as an int array ``(N,)``; each item is checked on the way.

    Raises:
        DataError: an item's label is not a class index, or (``same_shapes``) its input shape
            differs from item 0's; the message names the item.
    """
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    first = input_shape(dataset[0]) if same_shapes else None
    labels = []
    for i in range(dataset_len(dataset)):
        x, y = dataset[i]
        problem, _ = _label_problem(y)
        if problem:
            raise DataError(f"data source {source!r}: item {i} of the {split!r} split has label {problem}.")
        if same_shapes and input_shape((x, y)) != first:
            raise DataError(
                f"data source {source!r}: examples have different shapes: item 0 of {split!r} has input shape {first} "
                f"but item {i} has {input_shape((x, y))}; without a collate_fn every input must have the same shape. "
                "Pad or crop them, or return a 'collate_fn' that batches them."
            )
        labels.append(int(y.item() if isinstance(y, (Tensor, np.ndarray)) else y))
    return np.asarray(labels, dtype=np.int64)

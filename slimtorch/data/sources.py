"""Built-in data sources and ``module:function`` sources; ``labeled_fraction`` splits off transfer data."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from slimtorch.data.bundle import UNLABELED, DataBundle, dataset_len
from slimtorch.data.checks import check_same_shapes, check_split, class_labels, transfer_split
from slimtorch.data.registry import DATA_SOURCES, unknown_args_message
from slimtorch.errors import DataError, ModelRefError, RecipeError
from slimtorch.models.refs import import_object
from slimtorch.optional import import_optional


def _split(x: np.ndarray, y: np.ndarray, fractions: tuple[float, float], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffle then cut into train / val / test with the given val and test fractions."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val, n_test = int(len(x) * fractions[0]), int(len(x) * fractions[1])
    cuts = [order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]]
    return [(x[idx], y[idx]) for idx in cuts]


def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))


@DATA_SOURCES.register("digits")
def digits(seed: int = 0) -> dict[str, Any]:
    """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), scaled to [0, 1], shape (1, 8, 8)."""
    bunch = import_optional("sklearn.datasets", feature="the digits data source").load_digits()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    train, val, test = _split(x, bunch.target, (0.1, 0.2), seed)
    return {"train": _tensors(*train), "val": _tensors(*val), "test": _tensors(*test), "num_classes": 10}


@DATA_SOURCES.register("mnist1d")
def mnist1d(seed: int = 0, num_samples: int = 5000) -> dict[str, Any]:
    """MNIST-1D (Greydanus 2020), generated offline: 40-sample 1-D signals of 10 classes, shape (1, 40)."""
    mnist1d_data = import_optional("mnist1d.data", feature="the mnist1d data source")
    get_dataset_args, make_dataset = mnist1d_data.get_dataset_args, mnist1d_data.make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = 42 + seed
    data = make_dataset(args)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)[:, None, :]
    y = np.concatenate([data["y"], data["y_test"]])
    train, val, test = _split(x, y, (0.1, 0.2), seed)
    return {"train": _tensors(*train), "val": _tensors(*val), "test": _tensors(*test), "num_classes": 10}


@DATA_SOURCES.register("synthetic")
def synthetic(
    seed: int = 0, shape: tuple[int, ...] | list[int] = (3, 224, 224), num_classes: int = 1000, num_samples: int = 96
) -> dict[str, Any]:
    """Gaussian inputs with random labels: for measuring size and speed of a model without its data.

    Accuracy on it is meaningless (chance); the report's latency, MACs and size are what count.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, *shape, generator=generator)
    y = torch.randint(0, num_classes, (num_samples,), generator=generator)
    cut = [int(num_samples * 0.6), int(num_samples * 0.8)]
    parts = [slice(0, cut[0]), slice(cut[0], cut[1]), slice(cut[1], None)]
    train, val, test = (TensorDataset(x[p], y[p]) for p in parts)
    return {"train": train, "val": val, "test": test, "num_classes": num_classes}


class Unlabeled(Dataset):
    """Wrap a dataset so every label reads ``UNLABELED``: the labels are hidden, not just ignored."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return dataset_len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        item = self.dataset[i]
        x = item[0] if isinstance(item, (tuple, list)) else item
        # a tensor like the labeled splits' labels, so a mixed (labeled + transfer) batch collates
        return x, torch.tensor(UNLABELED)


def _labels(dataset: Dataset) -> np.ndarray:
    return class_labels("train", "train", dataset, same_shapes=False)


def split_labeled(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Keep a stratified ``fraction`` of ``train`` labeled; the rest becomes an unlabeled transfer set."""
    labels = _labels(train)
    rng = np.random.default_rng(seed + 1)
    keep: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        keep.extend(idx[: max(1, round(fraction * len(idx)))].tolist())
    keep_set = set(keep)
    rest = [i for i in range(len(labels)) if i not in keep_set]
    return Subset(train, sorted(keep)), Unlabeled(Subset(train, rest))


def _call_user_source(ref: str, args: dict[str, Any]) -> dict[str, Any]:
    try:
        factory = import_object(ref, "data")
    except ModelRefError as exc:
        raise DataError(str(exc)) from exc
    try:
        inspect.signature(factory).bind(**args)
    except TypeError:
        names = ", ".join(inspect.signature(factory).parameters) or "none"
        raise DataError(f"data source {ref!r} cannot take data.args {sorted(args)}; its parameters: {names}.") from None
    except ValueError:  # a builtin without a signature: let the call itself decide
        pass
    out = factory(**args)
    if not isinstance(out, dict) or not {"train", "val", "test"} <= set(out):
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise DataError(f"data source {ref!r} must return a dict with keys 'train', 'val', 'test' (and optionally 'transfer'); got {got}.")
    return out


def check_source_args(source: str, args: dict[str, Any]) -> None:
    """Raise a RecipeError naming the valid keys when ``args`` has a key the built-in ``source`` does not take."""
    problem = unknown_args_message(source, args)
    if problem:
        raise RecipeError(f"{problem}.")


def infer_num_classes(*labels: np.ndarray) -> int:
    """C from the labels of every split (each ``(N,)``); transfer examples (``UNLABELED``) are left out."""
    merged = np.concatenate([np.asarray(y) for y in labels if len(y)])
    merged = merged[merged != UNLABELED]
    if merged.min() < 0:
        raise DataError(f"labels must be class indices 0..C-1 (or {UNLABELED} for unlabeled); found {merged.min()}.")
    return int(merged.max()) + 1


def _check_scored_splits_labeled(source: str, labels: dict[str, np.ndarray]) -> None:
    """val and test are scored: an example without a class (UNLABELED, -1) would count as a wrong answer."""
    for name in ("val", "test"):
        y = np.asarray(labels[name])
        bad = np.flatnonzero(y == UNLABELED)  # other negatives are refused as not class indices
        if len(bad):
            raise DataError(f"data {source!r}: split {name!r} has {len(bad)} examples labeled {UNLABELED} (first: item {int(bad[0])}); "
                            "val and test are scored, so every example needs a class 0..C-1. Remove those examples, or put "
                            "unlabeled data in the train or transfer split.")


def build_data(
    source: str,
    *,
    args: dict[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    labeled_fraction: float = 1.0,
    transfer: str | None = None,
    num_classes: int | None = None,
) -> DataBundle:
    """Build the run's :class:`DataBundle` from a source name or ``module:function``."""
    args = dict(args or {})
    if ":" in source:
        raw = _call_user_source(source, args)
    else:
        factory = DATA_SOURCES.get(source)
        check_source_args(source, args)
        if "seed" in inspect.signature(factory).parameters:
            args.setdefault("seed", seed)
        raw = factory(**args)
    task = raw.get("task", "classification")
    collate = raw.get("collate_fn")
    splits = {name: check_split(source, name, raw[name], task, collate) for name in ("train", "val", "test")}
    if raw.get("transfer") is not None:
        raw = {**raw, "transfer": transfer_split(source, raw["transfer"])}
    if collate is None:
        check_same_shapes(source, splits)
    raw = {**raw, **splits}
    if task == "classification":
        labels = {n: class_labels(source, n, raw[n], same_shapes=collate is None) for n in ("train", "val", "test")}
        _check_scored_splits_labeled(source, labels)
        found = infer_num_classes(*labels.values())
        num_classes = num_classes or raw.get("num_classes") or found
        if found > num_classes:
            raise DataError(f"labels go up to {found - 1} but num_classes is {num_classes}; labels must be 0..{num_classes - 1}.")
    train, transfer_set = raw["train"], raw.get("transfer")
    if labeled_fraction < 1.0:
        train, hidden = split_labeled(train, labeled_fraction, seed)
        transfer_set = hidden if transfer_set is None else torch.utils.data.ConcatDataset([hidden, Unlabeled(transfer_set)])
    elif transfer_set is not None:
        transfer_set = Unlabeled(transfer_set)
    if transfer is not None:
        extra = build_data(transfer, seed=seed).train
        transfer_set = Unlabeled(extra) if transfer_set is None else torch.utils.data.ConcatDataset([transfer_set, Unlabeled(extra)])
    first = raw["test"][0]
    x0 = first[0] if isinstance(first, (tuple, list)) else first
    return DataBundle(
        name=source,
        train=train,
        val=raw["val"],
        test=raw["test"],
        transfer=transfer_set,
        teacher_train=raw["train"],
        task=task,
        num_classes=num_classes if task == "classification" else None,
        input_shape=tuple(x0.shape) if isinstance(x0, torch.Tensor) else None,
        collate_fn=raw.get("collate_fn"),
        batch_size=batch_size,
        info={"labeled_fraction": labeled_fraction, "train_labeled": dataset_len(train),
              "transfer": 0 if transfer_set is None else dataset_len(transfer_set)},
    )

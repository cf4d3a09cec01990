"""The datasets of one run, split and ready for loaders."""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from slimtorch.batch import Batch

UNLABELED = -1  # label of transfer-set examples: distillation may use their inputs, never a label


def dataset_len(dataset: Dataset) -> int:
    """``len(dataset)``: every dataset a run reads is map-style and sized, though torch's ``Dataset`` declares no ``__len__``."""
    return len(cast(Sized, dataset))


@dataclass
class DataBundle:
    """Train/val/test splits of ``(x, y)`` pairs plus an optional unlabeled transfer set.

    ``transfer`` holds ``(x, UNLABELED)`` pairs: the hidden-label part of a ``labeled_fraction < 1``
    run or a separate ``data.transfer`` source. ``collate_fn`` turns a list of examples into
    ``(x, y)`` batches (tokenization for text).
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    transfer: Dataset | None = None
    task: str = "classification"
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    collate_fn: Callable[[list[Any]], tuple[Batch, torch.Tensor]] | None = None
    batch_size: int = 64
    # The full labeled train split: what a teacher trained inside the recipe learns from. With
    # labeled_fraction < 1 only the student's data is reduced (scenario 2: the teacher had its own data).
    teacher_train: Dataset | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def loader(self, split: str | Dataset, batch_size: int | None = None, shuffle: bool = False, seed: int = 0) -> DataLoader:
        dataset = getattr(self, split) if isinstance(split, str) else split
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=self.collate_fn,
        )

    def distill_set(self) -> Dataset:
        """Labeled train set plus the unlabeled transfer set (scenario 2), or just train."""
        return self.train if self.transfer is None else ConcatDataset([self.train, self.transfer])

    def example_batch(self, batch_size: int, split: str = "test") -> Batch:
        """``batch_size`` real inputs (repeated if the split is smaller), for latency and export."""
        dataset = getattr(self, split)
        items = [dataset[i % len(dataset)] for i in range(batch_size)]
        x, _ = (self.collate_fn or torch.utils.data.default_collate)(items)
        return x

"""Task metrics: accuracy and per-class accuracy for classifiers, cosine to a reference for encoders."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimtorch.core import Batch, forward
from slimtorch.measure.modes import eval_mode

if TYPE_CHECKING:
    from slimtorch.data.bundle import DataBundle


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[tuple[Batch, Tensor]]) -> tuple[Tensor, Tensor]:
    """Run ``model`` in eval mode over ``(x, y)`` batches; returns ``(outputs (N, ...), labels (N,))``."""
    outputs, labels = [], []
    with eval_mode(model):
        for x, y in batches:
            outputs.append(forward(model, x).float().cpu())  # metrics are computed on the CPU, beside the labels
            labels.append(torch.as_tensor(y))
    return torch.cat(outputs), torch.cat(labels)


def accuracy_of(logits: Tensor, labels: Tensor) -> float:
    """Fraction of correct argmax predictions. logits (N, C), labels (N,)."""
    return (logits.argmax(-1) == labels).float().mean().item()


def per_class_accuracy(logits: Tensor, labels: Tensor) -> dict[str, float]:
    pred = logits.argmax(-1)
    return {str(int(c)): (pred[labels == c] == c).float().mean().item() for c in labels.unique().tolist()}


def mean_cosine(outputs: Tensor, reference: Tensor) -> float:
    """Mean cosine similarity of matching rows. outputs, reference (N, D)."""
    return F.cosine_similarity(outputs.flatten(1), reference.flatten(1), dim=-1).mean().item()


def agreement(outputs: Tensor, reference: Tensor) -> float:
    """Fraction of examples whose argmax prediction equals the reference model's."""
    return (outputs.argmax(-1) == reference.argmax(-1)).float().mean().item()


def task_metric(model: nn.Module, data: DataBundle, split: str = "val", reference: nn.Module | None = None) -> float:
    """Accuracy for classification; mean cosine to ``reference``'s outputs for embedding tasks."""
    outputs, labels = predict(model, data.loader(split))
    if data.task == "classification":
        return accuracy_of(outputs, labels)
    if reference is None:
        raise ValueError("an embedding task needs a reference model to compare against")
    ref_outputs, _ = predict(reference, data.loader(split))
    return mean_cosine(outputs, ref_outputs)

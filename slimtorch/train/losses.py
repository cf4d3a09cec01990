"""The supervised term every training stage shares: cross-entropy over the *labeled* rows of a batch.

Scenario-2 batches mix labeled rows with transfer-set rows whose label is ``UNLABELED`` (-1). The
cross-entropy is the mean over the labeled rows only, so the labels weigh the same whether 10 % or
100 % of a batch carries one; a batch without any label gives 0 (with a gradient path, so
``backward`` still works).

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]])
    >>> labels = torch.tensor([0, -1, -1])
    >>> round(labeled_cross_entropy(logits, labels).item(), 4)  # CE of row 0 alone
    0.1269
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from slimtorch.batch import Batch, forward
from slimtorch.data.bundle import UNLABELED


def labeled_cross_entropy_rows(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-row shares of :func:`labeled_cross_entropy`: their mean over the batch *is* that loss.

    A labeled row gets ``CE_i · B / n_labeled``, an unlabeled row 0, so adding these rows to other
    per-row terms (averaged over all B rows, like the soft-target term of KD) weighs the label term as
    a mean over labeled rows. logits (B, C), labels (B,) -> (B,).
    """
    labeled = labels != UNLABELED  # (B,)
    n_labeled = int(labeled.sum())
    if n_labeled == 0:
        return logits.sum(-1) * 0.0
    ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")  # (B,)
    return ce * labeled * (labels.numel() / n_labeled)


def labeled_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the rows whose label is not ``UNLABELED``; 0 when there is none. -> scalar."""
    return labeled_cross_entropy_rows(logits, labels).mean()


def cross_entropy(model: nn.Module, x: Batch, y: Tensor) -> Tensor:
    """The labels-only training loss ``loss_fn(model, x, y)``: :func:`labeled_cross_entropy` of the model's output."""
    return labeled_cross_entropy(forward(model, x), y)


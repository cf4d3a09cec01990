"""User code for the ownership tests: a model that runs out of memory while measured, a slow one."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from slimtorch.models.builtin import MLP


class GreedyMLP(MLP):
    """Each forward asks the allocator for ``eval_bytes`` in eval mode and ``train_bytes`` in training
    (an activation that does not fit); 0 asks for nothing."""

    def __init__(self, eval_bytes: int, train_bytes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eval_bytes, self.train_bytes = eval_bytes, train_bytes

    def forward(self, x: Tensor) -> Tensor:
        need = self.train_bytes if self.training else self.eval_bytes
        if need:
            scratch = torch.empty(need // 4)
            del scratch
        return super().forward(x)


def greedy(eval_bytes: int = 8 * 2**30, train_bytes: int = 0, input_shape: Sequence[int] = (8,), num_classes: int = 3) -> GreedyMLP:
    return GreedyMLP(eval_bytes, train_bytes, input_shape=input_shape, num_classes=num_classes, hidden=[8])


class SlowMLP(MLP):
    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            time.sleep(0.01)
        return super().forward(x)


def slow(input_shape: Sequence[int] = (8,), num_classes: int = 3) -> SlowMLP:
    return SlowMLP(input_shape=input_shape, num_classes=num_classes, hidden=[8])

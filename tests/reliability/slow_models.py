"""A user model factory for the kill/resume test: the built-in MLP, slowed down while it trains.

The delay makes each optimizer step take a few milliseconds, so a test polling the run's checkpoints
can SIGKILL it in the middle of a training loop rather than racing it. Evaluation is not slowed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from torch import Tensor

from slimtorch.models.builtin import MLP


class SlowMLP(MLP):
    def __init__(self, delay_s: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay_s = delay_s

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            time.sleep(self.delay_s)
        return super().forward(x)


def mlp(hidden: Sequence[int] = (32,), dropout: float = 0.0, delay_s: float = 0.004,
        input_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10) -> SlowMLP:
    return SlowMLP(delay_s, input_shape=input_shape, num_classes=num_classes, hidden=hidden, dropout=dropout)

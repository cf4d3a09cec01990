"""Learning-rate schedules of the training loop: a plain function of the step, plus one stateful object.

Every schedule starts with a linear warm-up and none decays to zero: a decaying schedule stops at
``lr · lr_floor``. ``epochs`` is a ceiling (training usually stops earlier, once it has converged), so
a schedule that must reach its end to have learned would tie the result to a guess of that ceiling.

- ``constant`` (default): warm-up, then the peak rate until training stops.
- ``cosine``: warm-up, then a cosine from the peak down to the floor at the ceiling's last step.
- ``onecycle``: a linear rise over the first 30 % of the ceiling, then a cosine down to the floor
  (Smith & Topin 2017, https://arxiv.org/abs/1708.07120; the warm-up is the rise).
- ``plateau``: warm-up, then the rate halves whenever the validation metric has not improved for
  ``plateau_patience`` epochs, down to the floor.

Example:
    >>> [round(lr_factor("cosine", s, total_steps=10, warmup_steps=2, floor=0.1), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.55, 0.1]
"""

from __future__ import annotations

import math
from typing import Any

import torch

from slimtorch.train.config import Schedule

ONECYCLE_RISE = 0.3  # fraction of the ceiling's steps spent rising to the peak
PLATEAU_FACTOR = 0.5  # the plateau schedule's cut


def lr_factor(kind: Schedule, step: int, *, total_steps: int, warmup_steps: int, floor: float) -> float:
    """Multiplier of the peak rate for optimizer step ``step`` (0-based) under schedule ``kind``."""
    total_steps = max(1, total_steps)
    if kind == "onecycle":
        rise = max(1, round(ONECYCLE_RISE * total_steps))
        if step < rise:
            return floor + (1 - floor) * (step + 1) / rise
        return _cosine(step - rise, total_steps - rise, floor)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "cosine":
        return _cosine(step - warmup_steps, total_steps - warmup_steps, floor)
    return 1.0  # constant; plateau cuts are applied on top by LRSchedule


def _cosine(step: int, length: int, floor: float) -> float:
    progress = min(step, max(1, length)) / max(1, length)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class LRSchedule:
    """Sets every param group's rate each step; ``state_dict`` goes into checkpoints so a resume continues it.

    Args:
        optimizer: the optimizer whose rates are set.
        kind: the schedule (see the module docstring).
        base_lr: the peak rate.
        total_steps: optimizer steps at the epochs ceiling.
        warmup_steps: steps of linear warm-up (``onecycle`` uses its own rise instead).
        floor: decaying schedules end at ``base_lr · floor``.
        plateau_patience: epochs without a better validation metric before ``plateau`` halves the rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: Schedule, base_lr: float, *, total_steps: int,
                 warmup_steps: int, floor: float, plateau_patience: int = 3) -> None:
        self.optimizer, self.kind = optimizer, kind
        self.base_lr, self.total_steps, self.warmup_steps, self.floor = base_lr, total_steps, warmup_steps, floor
        self.plateau_patience = plateau_patience
        self.steps = 0
        self.scale = 1.0  # plateau cuts so far
        self.best = -math.inf
        self.bad_epochs = 0
        self._apply()

    @property
    def lr(self) -> float:
        """The rate the next optimizer step will use."""
        factor = lr_factor(self.kind, self.steps, total_steps=self.total_steps, warmup_steps=self.warmup_steps, floor=self.floor)
        return self.base_lr * max(factor * self.scale, self.floor if self.steps >= self.warmup_steps else 0.0)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def step(self) -> None:
        """Call after each optimizer step."""
        self.steps += 1
        self._apply()

    def end_epoch(self, metric: float) -> None:
        """Call after each epoch's validation (higher is better); only ``plateau`` reacts."""
        if self.kind != "plateau":
            return
        if metric > self.best:
            self.best, self.bad_epochs = metric, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.plateau_patience and self.scale > self.floor:
            self.scale, self.bad_epochs = max(self.scale * PLATEAU_FACTOR, self.floor), 0
            self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "base_lr": self.base_lr, "steps": self.steps, "scale": self.scale, "best": self.best,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lr, self.steps, self.scale = float(state["base_lr"]), int(state["steps"]), float(state["scale"])
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
        self._apply()

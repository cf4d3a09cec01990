"""Sparsity schedules and the recovery training run between pruning steps."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from slimtorch.core import RunContext
from slimtorch.distill.losses import recovery_loss
from slimtorch.measure.accuracy import task_metric
from slimtorch.train.loop import FitResult, TrainConfig, fit


def sparsity_schedule(kind: str, final: float, steps: int) -> list[float]:
    """Cumulative sparsity after each pruning step.

    - ``oneshot``: ``[final]``;
    - ``iterative``: each step removes the same fraction of what remains, ``1 - (1 - s)^(t/T)``;
    - ``cubic``: Zhu & Gupta 2017 (https://arxiv.org/abs/1710.01878), ``s_t = s (1 - (1 - t/T)^3)``:
      fast early, gentle near the end.

    Example:
        >>> [round(s, 3) for s in sparsity_schedule("cubic", 0.9, 3)]
        [0.633, 0.867, 0.9]
    """
    if kind == "oneshot" or steps == 1:
        return [final]
    if kind == "iterative":
        return [1 - (1 - final) ** (t / steps) for t in range(1, steps + 1)]
    if kind == "cubic":
        return [final * (1 - (1 - t / steps) ** 3) for t in range(1, steps + 1)]
    raise ValueError(f"unknown schedule {kind!r}; use oneshot, iterative or cubic")


def step_ratios(cumulative: list[float]) -> list[float]:
    """Per-step fractions of the *remaining* structure to remove, from cumulative sparsities."""
    out, kept = [], 1.0
    for s in cumulative:
        out.append(1 - (1 - s) / kept if kept > 0 else 0.0)
        kept = 1 - s
    return out


def recover(
    model: nn.Module,
    ctx: RunContext,
    *,
    epochs: int,
    lr: float,
    teacher: nn.Module | None,
    temperature: float,
    alpha: float,
    checkpoint_dir: Path | None,
    description: str,
) -> FitResult | None:
    """Fine-tune (labels) or distil (from ``teacher``) the pruned model; masks stay applied throughout."""
    if epochs <= 0:
        return None
    data, task = ctx.data, ctx.task

    loss_fn = recovery_loss(teacher, task, temperature, alpha)

    def evaluate(m: nn.Module) -> float:
        return task_metric(m, data, "val", reference=teacher)

    dataset = data.distill_set() if teacher is not None else data.train
    loader = data.loader(dataset, shuffle=True, seed=ctx.seed)
    return fit(model, loss_fn, loader, TrainConfig(epochs=epochs, lr=lr), ctx, evaluate=evaluate,
               checkpoint_dir=checkpoint_dir, description=description)

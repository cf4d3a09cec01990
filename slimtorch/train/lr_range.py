"""``lr: auto``: a short learning-rate range test (Smith 2017, https://arxiv.org/abs/1506.01186, §3.3).

The rate grows exponentially from ``min_lr`` to ``max_lr`` over at most ``steps`` optimizer steps
(cycling the loader) while the smoothed training loss is recorded; the test stops once that loss is
four times its best. The chosen rate is a tenth of the rate at the lowest smoothed loss — the usual
rule, one decade below where the loss bottoms out. The model's weights (and buffers) and the RNG are
restored afterwards, so the test leaves no trace besides the rate it returns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from slimtorch.core import Batch
from slimtorch.distributed import training_world_size

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Batch, Any], torch.Tensor]  # y: the loader's target, as in train.loop


@dataclass
class RangeTest:
    lr: float
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def lr_range_test(model: nn.Module, loss_fn: LossFn, loader: DataLoader, params: list[nn.Parameter], *,
                  weight_decay: float = 0.0, min_lr: float = 1e-6, max_lr: float = 1.0, steps: int = 100,
                  smoothing: float = 0.9) -> RangeTest:
    """Find a peak learning rate for AdamW on ``params``; ``model`` is left exactly as it was."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    was_training = model.training
    optimizer = torch.optim.AdamW(params, lr=min_lr, weight_decay=weight_decay)
    growth = (max_lr / min_lr) ** (1 / max(1, steps - 1))
    result = RangeTest(lr=min_lr)
    avg, best = 0.0, math.inf
    model.train()
    try:
        step = 0
        while step < steps:
            for x, y in loader:
                lr = min_lr * growth**step
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = loss_fn(model, x, y)
                value = loss.item()
                if training_world_size() > 1:  # every DDP rank runs the test: the same decisions on each
                    t = torch.tensor([value], dtype=torch.float64)
                    torch.distributed.all_reduce(t)
                    value = float(t[0]) / training_world_size()
                if not math.isfinite(value):
                    step = steps
                    break
                avg = smoothing * avg + (1 - smoothing) * value
                smoothed = avg / (1 - smoothing ** (step + 1))  # bias-corrected running mean
                result.lrs.append(lr)
                result.losses.append(smoothed)
                if smoothed > 4 * best:
                    step = steps
                    break
                best = min(best, smoothed)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if step >= steps:
                    break
    finally:
        model.load_state_dict(saved)
        torch.set_rng_state(rng)
        model.train(was_training)
    if result.losses:
        at_min = min(range(len(result.losses)), key=result.losses.__getitem__)
        result.lr = result.lrs[at_min] / 10
    log.info("lr range test: %d steps, lowest loss at lr %.3g, chose %.3g", len(result.losses), result.lr * 10, result.lr)
    return result

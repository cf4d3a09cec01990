"""Resource limits from the recipe's ``resources:`` block, and the check of its ``device:`` spelling.

- ``max_params`` / ``max_memory_mb``: checked on every model the run builds (teachers, the student,
  an auto-derived student) *before* any training, so a model that cannot fit fails in seconds.
  The memory figure is an estimate of what training needs: fp32 weights + gradients + AdamW's two
  moment buffers (4 × the weights); a model that is only measured needs its weights.
- ``max_stage_seconds``: a wall-time budget per step (teacher training or one stage). Training loops
  check it after every optimizer step; when it runs out they stop, keep the best weights so far and
  the stage gets a note saying where it stopped (:func:`time_budget`, :func:`over_time_budget`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from slimtorch.errors import RecipeError, TrainingError
from slimtorch.units import MB

if TYPE_CHECKING:
    from torch import nn


def check_device_spec(value: str) -> str:
    """``value`` normalised when it names a device kind (not checked against this machine), else ValueError."""
    v = value.strip().lower()
    if v not in ("auto", "cpu", "cuda", "mps") and not re.fullmatch(r"cuda:\d+", v):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps; got {value!r}")
    return v


class ResourceSpec(BaseModel):
    """The recipe's ``resources:`` block: limits checked before and during the run (sizes in decimal MB)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_params: int | None = Field(None, gt=0, description="refuse models with more parameters than this before any work starts")
    max_memory_mb: float | None = Field(None, gt=0, description="refuse models whose estimated memory (MB, 10^6 bytes) exceeds this")
    max_stage_seconds: float | None = Field(None, gt=0, description="stop training in a stage after this wall time")


# fp32 weights + gradients + AdamW exp_avg + exp_avg_sq
TRAINING_MEMORY_FACTOR = 4


def model_memory_mb(model: nn.Module, training: bool) -> float:
    """Estimated MB a model needs: its weights, or weights + grads + AdamW state when it is trained."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    factor = TRAINING_MEMORY_FACTOR if training else 1
    return weights * factor / MB


def check_model_fits(model: nn.Module, limits: ResourceSpec, ref: str, *, training: bool = False) -> None:
    """Raise before any work when a model is over the recipe's parameter or memory budget.

    Raises:
        RecipeError: with the model's size, the limit, and what to change.
    """
    params = sum(p.numel() for p in model.parameters())
    if limits.max_params is not None and params > limits.max_params:
        raise RecipeError(
            f"model {ref!r} has {params:,} parameters, over resources.max_params={limits.max_params:,}. "
            "Pick a smaller model or raise the limit."
        )
    if limits.max_memory_mb is not None:
        need = model_memory_mb(model, training)
        if need > limits.max_memory_mb:
            what = "to train (weights, gradients and AdamW state: 4× the fp32 weights)" if training else "for its weights alone"
            raise RecipeError(
                f"model {ref!r} needs about {need:.3g} MB {what}, over resources.max_memory_mb={limits.max_memory_mb:g}. "
                "Pick a smaller model or raise the limit."
            )


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the ways running out of memory surfaces: MemoryError, torch's OutOfMemoryError (CUDA), and the
    CPU allocator's RuntimeError ("can't allocate memory")."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", ())
    return isinstance(exc, MemoryError) or (bool(oom) and isinstance(exc, oom)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


@contextmanager
def named_out_of_memory(what: str, batch_size: int | None) -> Iterator[None]:
    """Turn running out of memory inside ``what`` into a TrainingError that names it and says what to change."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        batch = f" (now {batch_size})" if batch_size else ""
        raise TrainingError(
            f"{what} ran out of memory ({str(exc).splitlines()[0][:120] or type(exc).__name__}). Lower its batch_size{batch} "
            "and raise `accumulate` to keep the effective batch, or train on a device with more memory; finished steps "
            "are kept for --resume."
        ) from exc


@dataclass
class TimeBudget:
    """A wall-time budget in force for the current step; training loops add notes when they stop on it."""

    seconds: float
    deadline: float
    notes: list[str] = field(default_factory=list)

    @property
    def is_exhausted(self) -> bool:
        return time.monotonic() >= self.deadline


_BUDGET: ContextVar[TimeBudget | None] = ContextVar("slimtorch_time_budget", default=None)


@contextmanager
def time_budget(seconds: float | None) -> Iterator[TimeBudget | None]:
    """Put a wall-time budget in force for the block (``None``: no budget); yields it (or None).

    Example:
        >>> with time_budget(60) as budget:  # doctest: +SKIP
        ...     model, record = stage.apply(model, ctx)
        >>> record.notes += budget.notes  # doctest: +SKIP
    """
    budget = None if seconds is None else TimeBudget(seconds, time.monotonic() + seconds)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def over_time_budget() -> TimeBudget | None:
    """The budget in force if it has run out, else None (training loops call this after each step)."""
    budget = _BUDGET.get()
    return budget if budget is not None and budget.is_exhausted else None

"""Where the report card measures a model: the run's GPU for torch models, the CPU otherwise.

``evaluate.device: auto`` measures on the device the run trained on, so a GPU user sees GPU latency
and peak GPU memory; ``cpu`` (or ``cuda:N``) measures there whatever the run used, e.g. a model trained
on a GPU for a CPU deployment. ONNX runtimes run on their own provider (the CPU here), and a torch
model whose kernels do not exist on the GPU (some packed int8/int4 layers) is measured on the CPU
with a note that says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from slimtorch.core import Batch, forward
from slimtorch.device import model_device, resolve_device, to_device


def measuring_device(setting: str, run_device: torch.device | None, model: nn.Module) -> torch.device:
    """The device ``model`` is measured on, from ``evaluate.device`` and the run's training device."""
    if getattr(model, "slimtorch_runtime", "torch") != "torch":
        return torch.device("cpu")
    if setting == "auto":
        return run_device if run_device is not None else torch.device("cpu")
    return resolve_device(setting)


@contextmanager
def placed_on(model: nn.Module, where: torch.device, probe: Batch, notes: list[str]) -> Iterator[torch.device]:
    """``model`` moved to ``where`` for the block (and back afterwards); yields the device it really runs on.

    One forward pass of ``probe`` checks that the model's kernels exist there; when they do not, the
    model stays where it was and a note in ``notes`` says why.
    """
    home = model_device(model)
    if where == home or where.type == "cpu" and home.type == "cpu":
        yield home
        return
    try:
        model.to(where)
        with torch.inference_mode():
            forward(model.eval(), to_device(probe, where))
    except (RuntimeError, NotImplementedError) as exc:
        model.to(home)
        notes.append(f"measured on {home.type}: this model does not run on {where} ({str(exc).splitlines()[0][:160]}).")
        yield home
        return
    try:
        yield where
    finally:
        model.to(home)


@dataclass
class PeakMemory:
    """Peak GPU memory a block allocated beyond what was already resident (the run's teachers, say).

    ``bytes`` stays None on the CPU: there the process's memory mixes the run's data, other models and
    the allocator's caches, and a figure that cannot be put down to the model is not reported.
    """

    bytes: int | None = None


@contextmanager
def peak_memory(where: torch.device) -> Iterator[PeakMemory]:
    """Measure the block's peak GPU memory on ``where`` into the yielded :class:`PeakMemory`."""
    peak = PeakMemory()
    if where.type != "cuda":
        yield peak
        return
    torch.cuda.synchronize(where)
    resident = torch.cuda.memory_allocated(where)
    torch.cuda.reset_peak_memory_stats(where)
    try:
        yield peak
    finally:
        torch.cuda.synchronize(where)
        peak.bytes = int(torch.cuda.max_memory_allocated(where) - resident)

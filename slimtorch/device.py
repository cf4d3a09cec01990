"""Which device a run trains on: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""

from __future__ import annotations

import itertools
import os
from typing import Any

import torch

from slimtorch.errors import RecipeError

DEVICE_HELP = "use auto, cpu, cuda, cuda:N or mps"


def resolve_device(spec: str | None) -> torch.device:
    """The ``torch.device`` a recipe's ``device:`` (or ``--device``) names, checked against this machine.

    Under torchrun, ``cuda``/``auto`` pick the GPU of this rank (``LOCAL_RANK``).

    Raises:
        RecipeError: the device does not exist here (e.g. ``cuda`` on a machine without CUDA).
    """
    spec = (spec or "auto").strip().lower()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        return torch.device("cuda", local % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RecipeError("device 'mps' was asked for but this machine has no Apple GPU (MPS); use device: cpu or auto.")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RecipeError(f"device {spec!r} was asked for but this machine has no CUDA GPU (torch {torch.__version__} "
                              f"sees none); use device: cpu or auto.")
        index = local if spec == "cuda" else _index(spec)
        if index >= torch.cuda.device_count():
            raise RecipeError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0.")
        return torch.device("cuda", index)
    raise RecipeError(f"unknown device {spec!r}; {DEVICE_HELP}.")


def _index(spec: str) -> int:
    try:
        return int(spec.split(":", 1)[1])
    except ValueError as exc:
        raise RecipeError(f"device {spec!r}: the part after 'cuda:' must be a GPU number, e.g. cuda:0.") from exc


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (a tensor, or a dict/tuple/list of them) on ``device``; a no-op when already there."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def device_facts(device: torch.device) -> dict[str, Any]:
    """What the report records about where a run trained."""
    # training threads too: float sums are reduced in a different order on another thread count
    facts: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        facts.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return facts


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither (e.g. an ONNX wrapper)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (GPU calls return before the work is done); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()

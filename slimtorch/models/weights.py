"""What a safetensors file holds, read from its header alone, and the check that a spec fits it.

A saved spec (``slimtorch.json``, a Hugging Face ``config.json``) is editable text that says how large a
model to build. Before anything is allocated, the architecture is built on PyTorch's ``meta`` device and
its size compared with the weights file: a spec far larger than its weights describes some other model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from slimtorch.errors import ArtifactError

# Values a model may hold beyond its weights file: non-persistent buffers such as a causal mask, and a
# classifier head that is initialised on purpose. Far below what an edited spec asks for.
SPEC_SLACK_VALUES = 10_000_000

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
           "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}

Shapes = dict[str, tuple[tuple[int, ...], torch.dtype]]


def safetensors_shapes(path: Path) -> Shapes:
    """Name -> (shape, dtype) of every tensor in a safetensors file (only the header is read).

    Raises:
        ArtifactError: the file is missing, empty, truncated or not safetensors.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for key in f.keys():  # noqa: SIM118  (a safe_open handle is not iterable)
                piece = f.get_slice(key)
                out[key] = (tuple(piece.get_shape()), _DTYPES.get(piece.get_dtype(), torch.float32))
        return out
    except (SafetensorError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{path} is missing or corrupted ({reason}); re-run the stage that wrote it or save the model again.") from exc


def stored_values(shapes: Shapes) -> int:
    return sum(math.prod(shape) for shape, _ in shapes.values())


def model_values(model: nn.Module) -> int:
    """Parameters plus buffers, counted once each (works on the meta device)."""
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def available_memory_bytes() -> int | None:
    """Memory the OS says is free for a new allocation (Linux ``MemAvailable``), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def check_fits_weights(meta_model: nn.Module, shapes: Shapes, spec_path: Path | str, weights: str,
                       built: nn.Module | None = None) -> None:
    """Refuse a spec whose (meta-device) model is far larger than the weights file it comes with.

    Args:
        meta_model: the architecture on the meta device, resized to the stored shapes where they differ.
        built: the same before resizing (what the constructor will allocate), when it differs: a structurally
            pruned model is rebuilt at its original widths first, so that may exceed the file, but never the free memory.

    Raises:
        ArtifactError: naming both sizes; nothing has been allocated.
    """
    wanted, stored = model_values(meta_model), stored_values(shapes)
    build_bytes = sum(t.numel() * t.element_size() for t in [*(built or meta_model).parameters(), *(built or meta_model).buffers()])
    free = available_memory_bytes()
    if wanted > 2 * stored + SPEC_SLACK_VALUES or (free is not None and build_bytes > free):
        what = f"{build_bytes / 1e9:.3g} GB to build" if free is not None and build_bytes > free else f"{wanted:,} values"
        raise ArtifactError(
            f"{spec_path} asks for a model of {what}, but {weights} holds {stored:,} values: the spec does not describe "
            "these weights (edited, or copied from another model), so nothing was allocated. Re-save the model or re-run "
            "the step that wrote it."
        )

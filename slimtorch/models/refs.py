"""Turn a model reference from a recipe into an ``nn.Module``.

References: a built-in name (``mlp``, ``cnn``, ``resnet``); ``module:function`` (the user's own
factory, called with ``args`` as keyword arguments); ``hf:<id-or-dir>``; ``gguf:<file>`` (a llama.cpp
file, converted once and cached: :mod:`slimtorch.models.gguf`); ``torchvision:<name>``
(vision extra); or a directory written by slimtorch (``slimtorch.load``). Architectures are built by
:mod:`slimtorch.models.architecture`; this module adds saved directories and refuses pickles.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from slimtorch import artifact
from slimtorch.errors import ModelRefError
from slimtorch.models.architecture import build_architecture, import_object

__all__ = ["build_model", "import_object"]

PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl"}


def build_model(
    ref: str,
    args: dict[str, Any] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Build the model a reference names. Built-ins get ``input_shape``/``num_classes`` from the data.

    ``trust_code`` applies to a saved directory: see :func:`slimtorch.artifact.load`.
    The returned module carries ``slimtorch_spec`` (how to rebuild it) so ``slimtorch.save`` can write a
    portable artifact.
    """
    if not ref.startswith(("hf:", "gguf:", "torchvision:")):
        if Path(ref).is_dir():
            return artifact.load(ref, trust_code=trust_code)
        if Path(ref).suffix in PICKLE_SUFFIXES:
            raise ModelRefError(
                f"{ref!r} is a pickle file; slimtorch never unpickles models (unpickling can run code). Save it with "
                "slimtorch.save (safetensors), or load it in your own 'package.module:function' factory if you trust it."
            )
    return build_architecture(ref, args, input_shape=input_shape, num_classes=num_classes)

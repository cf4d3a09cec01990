"""Build an architecture from a reference: what a recipe names and what a saved ``slimtorch.json`` records.

References: a built-in name (``mlp``, ``cnn``, ``resnet``); ``module:function`` (the user's own
factory, called with ``args`` as keyword arguments); ``hf:<id-or-dir>``; ``gguf:<file>`` (a llama.cpp
file, converted once and cached: :mod:`slimtorch.models.gguf`); ``torchvision:<name>``
(vision extra). Saved directories are :mod:`slimtorch.models.refs`' business (they load through
:mod:`slimtorch.artifact`, which rebuilds with this module).
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from slimtorch.errors import MissingExtraError, ModelRefError
from slimtorch.models.attrs import set_attrs_
from slimtorch.models.builtin import MODELS
from slimtorch.models.gguf import converted_dir
from slimtorch.models.hf import load_hf


def import_object(ref: str, what: str) -> Callable[..., Any]:
    """Import ``package.module:function``; errors say which half failed."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ModelRefError(f"{what} reference {ref!r} must look like 'package.module:function'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelRefError(
            f"{what} reference {ref!r}: cannot import module {module_name!r} ({exc}). "
            "Check the spelling and that its folder is on PYTHONPATH (run from the project root)."
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise ModelRefError(f"{what} reference {ref!r}: module {module_name!r} has no attribute {attr!r}. It has: {', '.join(public[:20])}.") from exc


def build_architecture(
    ref: str,
    args: dict[str, Any] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Build the architecture a (non-directory) reference names; see :func:`slimtorch.models.build_model`.

    The returned module carries ``slimtorch_spec`` (how to rebuild it) so ``slimtorch.save`` can write a
    portable artifact.
    """
    args = dict(args or {})
    if ref.startswith("hf:"):
        model: nn.Module = load_hf(ref[3:], **args)
    elif ref.startswith("gguf:"):
        if set(args) - {"kind"} or args.get("kind", "causal_lm") != "causal_lm":
            raise ModelRefError(f"{ref!r}: a GGUF file holds a causal language model; its only arg is kind: causal_lm (got {args}).")
        model = load_hf(str(converted_dir(ref[5:])), kind="causal_lm")
    elif ref.startswith("torchvision:"):
        model = _torchvision(ref.split(":", 1)[1], args, num_classes)
    elif ":" in ref and not Path(ref).exists():
        factory = import_object(ref, "model")
        _check_args(factory, args, ref)
        model = factory(**args)
        if not isinstance(model, nn.Module):
            raise ModelRefError(f"model factory {ref!r} returned {type(model).__name__}, not a torch.nn.Module.")
    elif ref in MODELS:
        factory = MODELS.get(ref)
        params = inspect.signature(factory).parameters
        if input_shape is not None and "input_shape" in params:
            args.setdefault("input_shape", list(input_shape))
        if num_classes is not None and "num_classes" in params:
            args.setdefault("num_classes", num_classes)
        try:
            model = factory(**args)
        except TypeError as exc:
            raise ModelRefError(f"model {ref!r}: {exc}. Valid args: {', '.join(params)}.") from exc
    else:
        raise ModelRefError(
            f"unknown model reference {ref!r}. {MODELS.unknown_message(ref).split('. ', 1)[1]} "
            "Or use 'package.module:function', 'hf:<dir>', 'gguf:<file>', 'torchvision:<name>' or a saved slimtorch directory."
        )
    return set_attrs_(model, slimtorch_spec={"ref": ref, "args": copy.deepcopy(args)})


def _check_args(factory: Callable[..., Any], args: dict[str, Any], ref: str) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        signature.bind(**args)
    except TypeError as exc:
        raise ModelRefError(f"model factory {ref!r} cannot take args {sorted(args)}: {exc}. Its parameters: {signature}.") from exc


def _torchvision(name: str, args: dict[str, Any], num_classes: int | None) -> nn.Module:
    try:
        models = importlib.import_module("torchvision.models")
    except Exception as exc:  # torchvision raises RuntimeError when its C ops do not match torch
        raise MissingExtraError(
            f"torchvision:{name} needs the vision extra: pip install 'slimtorch[vision]' ({exc})."
        ) from exc
    if num_classes is not None:
        args.setdefault("num_classes", num_classes)
    try:
        return models.get_model(name, **args)
    except ValueError as exc:
        raise ModelRefError(f"torchvision has no model {name!r}: {exc}") from exc


def is_safe_ref(ref: str) -> bool:
    """True for references that build an architecture without importing user code."""
    return ref in MODELS or ref.startswith(("hf:", "gguf:", "torchvision:"))

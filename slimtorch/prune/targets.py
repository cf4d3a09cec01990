"""Which layers a prune stage may touch, and why the others are left alone."""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import Tensor, nn

from slimtorch.core import Batch, forward
from slimtorch.errors import RecipeError
from slimtorch.prune.config import LayersConfig

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_prunable_type(module: nn.Module) -> bool:
    return isinstance(module, PRUNABLE) or type(module).__name__ == "Conv1D"  # transformers' GPT-2 Conv1D


def check_names(model: nn.Module, layers: LayersConfig) -> None:
    """Raise RecipeError for any include/exclude name that is not a module of ``model``."""
    names = [n for n, _ in model.named_modules() if n]
    for key, wanted in (("include", layers.include or []), ("exclude", layers.exclude)):
        for name in wanted:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
                hint = f" Close names: {', '.join(close)}." if close else f" Some module names: {', '.join(names[:8])}."
                raise RecipeError(f"prune.layers.{key}: the model has no module {name!r}.{hint}")


def _selected(fqn: str, layers: LayersConfig) -> bool:
    under = lambda prefixes: any(fqn == p or fqn.startswith(p + ".") for p in prefixes)
    return (layers.include is None or under(layers.include)) and not under(layers.exclude)


def output_layers(model: nn.Module, example: Batch) -> list[str]:
    """fqns of weight layers whose output is the model's output (the classifier / LM head)."""
    produced: dict[int, str] = {}
    order: list[tuple[str, Tensor]] = []

    def hook(fqn: str) -> Any:
        def run(_: nn.Module, __: Any, out: Any) -> None:
            if isinstance(out, Tensor):
                produced[out.data_ptr()] = fqn
                order.append((fqn, out))
        return run

    handles = [m.register_forward_hook(hook(f)) for f, m in model.named_modules() if is_prunable_type(m)]
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            out = forward(model, example)
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    if isinstance(out, Tensor) and out.data_ptr() in produced:
        return [produced[out.data_ptr()]]
    if isinstance(out, Tensor) and order and out.dim() == 2 and order[-1][1].shape == out.shape:
        return [order[-1][0]]
    return []


def select_layers(model: nn.Module, layers: LayersConfig, example: Batch | None) -> tuple[dict[str, nn.Module], list[dict[str, str]]]:
    """Prunable layers and the skipped ones with reasons.

    Returns:
        (fqn -> module to prune, [{"fqn", "reason"}] for layers left alone).
    """
    check_names(model, layers)
    heads = set(output_layers(model, example)) if example is not None else set()
    targets: dict[str, nn.Module] = {}
    skipped: list[dict[str, str]] = []
    for fqn, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not fqn or not isinstance(weight, Tensor) or weight.dim() < 2:
            continue
        if not _selected(fqn, layers):
            continue
        if fqn in heads:
            skipped.append({"fqn": fqn, "reason": "produces the model output (classifier / LM head); pruning it removes classes"})
        elif isinstance(module, nn.Embedding):
            skipped.append({"fqn": fqn, "reason": "embedding table: a lookup, not a matmul; pruning saves no compute"})
        elif not is_prunable_type(module):
            skipped.append({"fqn": fqn, "reason": f"{type(module).__name__} has no pruning rule (supported: Linear, Conv1d/2d/3d, Conv1D)"})
        else:
            targets[fqn] = module
    return targets, skipped


def select_mask_targets(
    model: nn.Module, layers: LayersConfig, example: Batch | None, granularity: str, vector_size: int
) -> tuple[dict[str, nn.Module], list[dict[str, str]]]:
    """:func:`select_layers`, minus the layers a mask granularity does not fit (each skipped with its reason)."""
    from slimtorch.prune.masks import group_layout

    targets, skipped = select_layers(model, layers, example)
    for fqn in list(targets):
        reason = group_layout(targets[fqn], granularity, vector_size)
        if reason:
            skipped.append({"fqn": fqn, "reason": reason})
            del targets[fqn]
    return targets, skipped

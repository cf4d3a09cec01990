"""Which layers a prune stage may touch, and why the others are left alone."""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import Tensor, nn

from slimtorch.core import Batch, forward
from slimtorch.errors import RecipeError
from slimtorch.measure.modes import eval_mode
from slimtorch.prune.config import LayersConfig
from slimtorch.prune.details import SkippedLayer
from slimtorch.prune.masks import group_layout

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
    """fqns of weight layers whose output channels are the model's output features (classifier / LM head).

    Found by behaviour, not by layer type: a layer is the head when shifting its output channel 0 changes
    feature 0 of the model output and nothing else (a Linear head, a SqueezeNet-style 1x1 conv then pooling).
    """
    produced: list[tuple[str, Tensor]] = []  # the tensors themselves: a freed buffer's address can be reused

    def record(fqn: str) -> Any:
        def run(_: nn.Module, __: Any, y: Any) -> None:
            if isinstance(y, Tensor):
                produced.append((fqn, y))
        return run

    handles = [m.register_forward_hook(record(f)) for f, m in model.named_modules() if is_prunable_type(m)]
    try:
        with eval_mode(model), torch.no_grad():
            out = forward(model, example)
            for h in handles:
                h.remove()
            if not isinstance(out, Tensor) or out.dim() < 2:
                return []
            direct = [f for f, y in produced if y is out]
            if direct:  # the output is a layer's own result: no need to probe
                return direct
            produced.clear()
            width = out.shape[-1] if out.dim() != 4 else out.shape[1]
            candidates = [(f, m) for f, m in model.named_modules() if is_prunable_type(m) and _out_channels(m) == width]
            return [f for f, m in candidates if _drives_only_feature_0(model, m, example, out)]
    finally:
        for h in handles:
            h.remove()


def _out_channels(module: nn.Module) -> int:
    weight = module.weight
    assert isinstance(weight, Tensor), f"{type(module).__name__} has no weight tensor"  # only layers with weights get here
    return int(weight.shape[1] if type(module).__name__ == "Conv1D" else weight.shape[0])  # GPT-2's Conv1D is (in, out)


def _drives_only_feature_0(model: nn.Module, module: nn.Module, example: Batch, reference: Tensor) -> bool:
    """Whether adding a large constant to ``module``'s output channel 0 moves only output feature 0."""
    def shift(_: nn.Module, __: Any, y: Any) -> Any:
        if not isinstance(y, Tensor):
            return y
        y = y.clone()
        channel = y[:, 0] if isinstance(module, nn.modules.conv._ConvNd) else y[..., 0]
        channel += 1.0 + 10 * y.detach().abs().max()  # large and positive, so it survives a ReLU
        return y

    handle = module.register_forward_hook(shift)
    try:
        out = forward(model, example)
    except RuntimeError:
        return False
    finally:
        handle.remove()
    if not isinstance(out, Tensor) or out.shape != reference.shape:
        return False
    moved = (out - reference).abs() > 1e-6 * (1 + reference.abs())
    moved = moved.movedim(1, -1) if reference.dim() == 4 else moved  # features last
    moved = moved.reshape(-1, reference.shape[1] if reference.dim() == 4 else reference.shape[-1]).any(0)  # (features,)
    return bool(moved[0]) and not bool(moved[1:].any())


def _attention_owner(model: nn.Module) -> dict[str, str]:
    """fqn of each Linear inside an ``nn.MultiheadAttention`` -> that attention's fqn."""
    return {f"{f}.{c}" if f else c: f for f, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
            for c, _ in m.named_modules() if c}


def select_layers(model: nn.Module, layers: LayersConfig, example: Batch | None) -> tuple[dict[str, nn.Module], list[SkippedLayer]]:
    """Prunable layers and the skipped ones with reasons.

    Returns:
        (fqn -> module to prune, a :class:`SkippedLayer` for each layer left alone).
    """
    check_names(model, layers)
    heads = set(output_layers(model, example)) if example is not None else set()
    in_attention = _attention_owner(model)
    targets: dict[str, nn.Module] = {}
    skipped: list[SkippedLayer] = []
    for fqn, module in model.named_modules():
        if fqn and isinstance(module, nn.RNNBase) and _selected(fqn, layers):
            skipped.append(SkippedLayer(fqn, f"{type(module).__name__} ({fqn}) has no pruning rule here: its weights are "
                                             "packed per gate (weight_ih_l0, weight_hh_l0...); its input and output widths "
                                             "follow the layers around it"))
            continue
        weight = getattr(module, "weight", None)
        if not fqn or not isinstance(weight, Tensor) or weight.dim() < 2:
            continue
        if not _selected(fqn, layers):
            continue
        if fqn in heads:
            skipped.append(SkippedLayer(fqn, "produces the model output (classifier / LM head); pruning it removes classes"))
        elif fqn in in_attention:
            skipped.append(SkippedLayer(fqn, f"part of nn.MultiheadAttention {in_attention[fqn]!r}, which is cut as one unit "
                                             "with the width it reads and writes"))
        elif isinstance(module, nn.Embedding):
            skipped.append(SkippedLayer(fqn, "embedding table: a lookup, not a matmul; pruning saves no compute"))
        elif not is_prunable_type(module):
            skipped.append(SkippedLayer(fqn, f"{type(module).__name__} has no pruning rule (supported: Linear, Conv1d/2d/3d, Conv1D)"))
        else:
            targets[fqn] = module
    return targets, skipped


def select_mask_targets(
    model: nn.Module, layers: LayersConfig, example: Batch | None, granularity: str, vector_size: int
) -> tuple[dict[str, nn.Module], list[SkippedLayer]]:
    """:func:`select_layers`, minus the layers a mask granularity does not fit (each skipped with its reason)."""

    targets, skipped = select_layers(model, layers, example)
    for fqn in list(targets):
        reason = group_layout(targets[fqn], granularity, vector_size)
        if reason:
            skipped.append(SkippedLayer(fqn, reason))
            del targets[fqn]
    return targets, skipped

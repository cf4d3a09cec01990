"""Thin adapter over Torch-Pruning (https://github.com/VainF/Torch-Pruning): dependency graph and pruner."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from slimtorch.core import Batch, forward
from slimtorch.optional import import_optional


def tp() -> Any:
    return import_optional("torch_pruning", feature="structured pruning")


class OutputActivationImportance:
    """Torch-Pruning importance from mean ``|y_c|`` of each output channel on calibration data.

    Channels of a coupled group are scored by the mean over the group's Linear/Conv outputs;
    groups with no recorded activation fall back to L2 magnitude.
    """

    def __init__(self, out_abs: dict[nn.Module, Tensor]) -> None:
        self.out_abs = out_abs
        self.fallback = tp().importance.GroupMagnitudeImportance(p=2)

    @torch.no_grad()
    def __call__(self, group: Any) -> Tensor:
        fn = tp().pruner.function
        total, count = None, 0
        for i, (dep, idxs) in enumerate(group):
            layer = dep.layer
            if dep.pruning_fn not in (fn.prune_conv_out_channels, fn.prune_linear_out_channels) or layer not in self.out_abs:
                continue
            root = torch.tensor(group[i].root_idxs)
            scores = self.out_abs[layer][torch.tensor(idxs)].float()
            if total is None:
                total = torch.zeros(len(group[0].idxs))
            total.scatter_add_(0, root, scores)
            count += 1
        return self.fallback(group) if total is None else total / count


def build_pruner(
    model: nn.Module,
    example: Batch,
    importance: Any,
    targets: dict[str, nn.Module],
    ignored: list[nn.Module],
    *,
    ratio: float,
    ratio_dict: dict[str, float] | None = None,
    round_to: int | None = None,
    global_pruning: bool = False,
) -> Any:
    """A Torch-Pruning ``BasePruner`` over ``targets``; ``ignored`` layers keep their output channels."""
    per_layer = {targets[f]: r for f, r in (ratio_dict or {}).items() if f in targets}
    # Torch-Pruning cuts an nn.MultiheadAttention's embed width with the layers around it, and the width left
    # must split into num_heads heads: keep a multiple of every head count. (Its num_heads option is for
    # separate q/k/v Linears and finds no group on a torch MHA.)
    heads = [m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    if heads:
        round_to = math.lcm(round_to or 1, *heads)
    return tp().pruner.BasePruner(
        model,
        example,
        importance=importance,
        pruning_ratio=ratio,
        pruning_ratio_dict=per_layer or None,
        ignored_layers=ignored,
        round_to=round_to,
        global_pruning=global_pruning,
        forward_fn=lambda m, x: forward(m, x),
    )


def describe_group(model: nn.Module, group: Any) -> list[dict[str, Any]]:
    """A group as plain data: ``[{"fqn", "is_out", "idxs"}]`` for every coupled Linear/Conv/norm layer."""
    names = {m: f for f, m in model.named_modules()}
    dg = group._DG
    out = []
    for dep, idxs in group:
        module = dep.target.module
        if module not in names:
            continue
        plain = [int(i) for i in tp()._helpers.to_plain_idxs(idxs)] if idxs and not isinstance(idxs[0], int) else [int(i) for i in idxs]
        out.append({"fqn": names[module], "is_out": bool(dg.is_out_channel_pruning_fn(dep.handler)), "idxs": plain})
    return out


def unknown_layer_couplings(model: nn.Module, pruner: Any, targets: dict[str, nn.Module]) -> dict[str, str]:
    """Target layers whose channels also size a >=2-D parameter of a layer Torch-Pruning has no rule for.

    Torch-Pruning cuts such an "unwrapped" parameter along its last non-singleton axis, a guess that is
    wrong for e.g. a custom ``x @ self.weight`` layer and leaves a model that fails at run time.

    Returns:
        ``{target fqn: reason}`` for each target that must be left whole.
    """
    parameter_type = tp().ops.OPTYPE.PARAMETER
    names = {id(p): n for n, p in model.named_parameters()}
    owners = {n: type(m).__name__ for f, m in model.named_modules() for n in (f"{f}.{k}" if f else k for k, _ in m.named_parameters(recurse=False))}
    dg = pruner.DG
    out: dict[str, str] = {}
    for fqn, module in targets.items():
        if module not in dg.module2node:
            out[fqn] = ("its forward never runs on the example (its parent calls its weight directly), so Torch-Pruning "
                        "cannot see what it is coupled to; left whole")
            continue
        group = dg.get_pruning_group(module, dg.get_pruner_of_module(module).prune_out_channels, idxs=[0])
        for dep, _ in group:
            param = dep.target.module
            if isinstance(param, nn.RNNBase):  # Torch-Pruning's LSTM rule covers one layer only, and GRU/RNN none
                rnn = next((f for f, m in model.named_modules() if m is param), type(param).__name__)
                out[fqn] = (f"its channels feed {type(param).__name__} {rnn!r}, whose gate-packed weights are not cut safely; "
                            "left whole so the model stays correct")
                break
            if dep.target.type == parameter_type and param.dim() >= 2 and id(param) in names:
                name = names[id(param)]
                out[fqn] = (f"its channels also size parameter {name!r} {tuple(param.shape)} of {owners.get(name, 'a custom layer')}, "
                            "a layer Torch-Pruning has no rule for; left whole so the model stays correct (build that layer "
                            "from nn.Linear/nn.Conv, or use a mask granularity such as weight)")
                break
    return out

"""Structural removal of output channels / neurons / filters through Torch-Pruning's dependency graph.

Removing channel ``c`` of a layer also removes everything coupled to it (BatchNorm entries, the
next layer's input column ``c``, every layer sharing a residual stream). :func:`mask_plan_` applies
the same plan as zero masks on an unpruned copy, which computes exactly what the removed model does.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from slimtorch.core import Batch
from slimtorch.prune._tp import build_pruner, describe_group
from slimtorch.prune.masks import weight_2d
from slimtorch.prune.targets import is_prunable_type

log = logging.getLogger(__name__)


def out_channels(module: nn.Module) -> int:
    return int(weight_2d(module, module.weight).shape[0])


def prune_structured_(
    model: nn.Module,
    example: Batch,
    importance: Any,
    targets: dict[str, nn.Module],
    sparsity: float,
    *,
    ratio_dict: dict[str, float] | None = None,
    round_to: int | None = None,
    scope: str = "layer",
) -> dict[str, Any]:
    """Remove ``sparsity`` of the output channels of each target layer (in place).

    Returns:
        ``{"groups": [[{"fqn", "is_out", "idxs"}]], "channels": {fqn: [before, after]}, "unchanged": [fqn]}``.
    """
    ignored = [m for f, m in model.named_modules() if f and is_prunable_type(m) and f not in targets]
    before = {f: out_channels(m) for f, m in targets.items()}
    pruner = build_pruner(
        model, example, importance, targets, ignored, ratio=sparsity, ratio_dict=ratio_dict,
        round_to=round_to, global_pruning=scope == "global",
    )
    groups = []
    for group in pruner.step(interactive=True):
        groups.append(describe_group(model, group))
        group.prune()
    after = {f: out_channels(m) for f, m in targets.items()}
    unchanged = [f for f in targets if before[f] == after[f] and (ratio_dict or {}).get(f, sparsity) > 0]
    return {"groups": groups, "channels": {f: [before[f], after[f]] for f in targets}, "unchanged": unchanged}


@torch.no_grad()
def mask_plan_(model: nn.Module, groups: list[list[dict[str, Any]]]) -> nn.Module:
    """Zero, on an unpruned model, what :func:`prune_structured_` removed: rows of pruned outputs and
    columns of pruned inputs of every Linear/Conv. The result computes what the removed model computes."""
    modules = dict(model.named_modules())
    for group in groups:
        for item in group:
            module = modules[item["fqn"]]
            if not is_prunable_type(module) or not item["idxs"]:
                continue
            w = weight_2d(module, module.weight)  # a view: writes reach the weight
            idxs = torch.tensor(item["idxs"])
            if item["is_out"]:
                w.index_fill_(0, idxs, 0.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.index_fill_(0, idxs, 0.0)
            else:
                w.index_fill_(1, idxs, 0.0)
    return model

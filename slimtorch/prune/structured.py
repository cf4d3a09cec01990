"""Structural removal of output channels / neurons / filters through Torch-Pruning's dependency graph.

Removing channel ``c`` of a layer also removes everything coupled to it (BatchNorm entries, the
next layer's input column ``c``, every layer sharing a residual stream). :func:`mask_plan_` applies
the same plan as zero masks on an unpruned copy, which computes exactly what the removed model does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimtorch.core import Batch
from slimtorch.prune._tp import build_pruner, describe_group, unknown_layer_couplings
from slimtorch.prune.details import SkippedLayer, skipped_reasons
from slimtorch.prune.masks import weight_2d, weight_of
from slimtorch.prune.targets import is_prunable_type

log = logging.getLogger(__name__)


def out_channels(module: nn.Module) -> int:
    return int(weight_2d(module, weight_of(module)).shape[0])


@dataclass(frozen=True)
class StructuredStep:
    """What one removal did.

    Attributes:
        groups: Torch-Pruning's groups as removed, ``[[{"fqn", "is_out", "idxs"}]]`` (:func:`mask_plan_` replays them).
        channels: fqn -> (before, after) output channels of each target layer.
        unchanged: fqn -> plain reason, for target layers that were asked to lose channels and kept them all.
        notes: where ``round_to`` changed the share removed.
    """

    groups: list[list[dict[str, Any]]]
    channels: dict[str, tuple[int, int]]
    unchanged: dict[str, str]
    notes: list[str]


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
) -> StructuredStep:
    """Remove ``sparsity`` of the output channels of each target layer (in place).

    Target layers whose channels also size a parameter of a layer Torch-Pruning has no rule for are
    left whole (see :func:`~slimtorch.prune._tp.unknown_layer_couplings`).
    """
    # An nn.MultiheadAttention's own Linears are cut by its Torch-Pruning rule, never ignored on their own.
    inner = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.modules() if c is not m}
    ignored = [m for f, m in model.named_modules() if f and is_prunable_type(m) and f not in targets and id(m) not in inner]
    ignored += [m for m in model.modules() if isinstance(m, nn.RNNBase)]  # Torch-Pruning would cut their hidden size
    before = {f: out_channels(m) for f, m in targets.items()}

    def pruner_for(ignored: list[nn.Module]) -> Any:
        return build_pruner(model, example, importance, targets, ignored, ratio=sparsity, ratio_dict=ratio_dict,
                            round_to=round_to, global_pruning=scope == "global")

    pruner = pruner_for(ignored)
    left_whole = unknown_layer_couplings(model, pruner, targets)
    if left_whole:  # rebuilt with those layers ignored: their groups are never cut
        pruner = pruner_for(ignored + [targets[f] for f in left_whole])
    groups = []
    for group in pruner.step(interactive=True):
        groups.append(describe_group(model, group))
        group.prune()
    after = {f: out_channels(m) for f, m in targets.items()}
    ratios = {f: (ratio_dict or {}).get(f, sparsity) for f in targets}
    unchanged = {f: left_whole.get(f) or why_unchanged(before[f], ratios[f], round_to, scope)
                 for f in targets if before[f] == after[f] and ratios[f] > 0}
    notes = [rounding_note(f, before[f], before[f] - after[f], ratios[f], round_to)
             for f in targets if before[f] != after[f] and scope == "layer" and round_to
             and abs(before[f] - after[f] - ratios[f] * before[f]) >= 1 + 1e-9]
    return StructuredStep(groups, {f: (before[f], after[f]) for f in targets}, unchanged, notes)


COUPLED = "no prunable group: its channels are coupled to an excluded layer or the output"


def why_unchanged(channels: int, ratio: float, round_to: int | None, scope: str) -> str:
    """The plain reason a target layer of ``channels`` outputs kept them all at ``ratio`` (Torch-Pruning's rounding)."""
    kept = int(channels * (1 - ratio))  # Torch-Pruning keeps int(n·(1−s)) channels of a layer
    if channels == 1:
        return "it has a single output channel, which is never removed"
    if round_to and round_to > channels:
        return (f"round_to {round_to} is wider than the layer ({channels} channels), so no multiple of it fits; "
                f"lower round_to to at most {channels}")
    if round_to and kept - kept % round_to <= 0:
        return (f"sparsity {ratio:g} keeps {kept} of {channels} channels, which rounds down to 0 as a multiple of round_to "
                f"{round_to}; lower round_to to at most {kept} or lower the sparsity")
    if channels - kept <= 0:
        return f"sparsity {ratio:g} of {channels} channels rounds to 0 channels; raise it to at least {1 / channels:.3g}"
    if scope == "global":
        return "global scope ranked all of its channels above the cut"
    return COUPLED


def rounding_note(fqn: str, channels: int, removed: int, ratio: float, round_to: int) -> str:
    """Say so when round_to made a layer lose a different share of channels than the sparsity asked for."""
    return (f"{fqn}: removed {removed} of {channels} channels ({removed / channels:.0%}), not {ratio:.0%}: round_to {round_to} "
            f"keeps a multiple of {round_to} channels.")


def outcome(channels: dict[str, tuple[int, int]], skipped: list[SkippedLayer]) -> tuple[str | None, list[str]]:
    """``(status or None for "done", notes)`` of a structured prune stage, from ``{fqn: (before, after)}``."""
    if any(before != after for before, after in channels.values()):
        return None, []
    reasons = skipped_reasons([s for s in skipped if s.fqn in channels])
    return "nothing pruned", [f"no channel was removed, so the model is unchanged ({reasons})."]


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

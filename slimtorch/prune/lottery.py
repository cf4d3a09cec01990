"""Lottery tickets (Frankle & Carbin 2019, https://arxiv.org/abs/1803.03635) with rewinding
(Frankle et al. 2019, https://arxiv.org/abs/1903.01611).

Iterative magnitude pruning: train, remove the smallest surviving weights, rewind the survivors to
their values at ``rewind_epoch``, retrain; repeat until ``sparsity``. The control trains the same mask
from a fresh random initialisation: a real ticket beats it.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from slimtorch.core import RunContext, seed_everything
from slimtorch.errors import UnsupportedModuleError
from slimtorch.measure.accuracy import task_metric
from slimtorch.prune.config import PruneConfig
from slimtorch.prune.details import LotteryDetails, LotteryRound, PruneResult
from slimtorch.prune.importance import build_importance
from slimtorch.prune.masks import compute_masks, mask_of, raw_weight, set_mask_
from slimtorch.prune.targets import select_mask_targets
from slimtorch.train.loop import TrainConfig, fit
from slimtorch.train.losses import cross_entropy


def reinit_(model: nn.Module, seed: int) -> nn.Module:
    """Fresh random weights with each layer's own initialiser (``reset_parameters``)."""
    torch.manual_seed(seed)
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if reset is not None and not isinstance(m, nn.utils.parametrize.ParametrizationList):
            reset()
    return model


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Effective parameters and buffers by plain fqn (``layer.weight``, never parametrization keys)."""
    out: dict[str, Tensor] = {}
    for fqn, m in model.named_modules():
        if isinstance(m, nn.utils.parametrize.ParametrizationList) or ".parametrizations" in fqn:
            continue
        prefix = f"{fqn}." if fqn else ""
        for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            out[prefix + name] = t.detach().clone()
        if mask_of(m) is not None:
            out[prefix + "weight"] = m.weight.detach().clone()
    return out


@torch.no_grad()
def rewind_(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load ``state`` (from :func:`snapshot`) keeping the current masks: masked weights stay zero."""
    for fqn, m in model.named_modules():
        if isinstance(m, nn.utils.parametrize.ParametrizationList) or ".parametrizations" in fqn:
            continue
        prefix = f"{fqn}." if fqn else ""
        mask = mask_of(m)
        if mask is not None:
            raw_weight(m).copy_(state[prefix + "weight"] * mask)
        for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if prefix + name in state:
                t.copy_(state[prefix + name])


def _train(model: nn.Module, ctx: RunContext, epochs: int, lr: float, tag: str) -> None:
    if epochs <= 0:
        return

    fit(model, cross_entropy, ctx.data.loader("train", shuffle=True, seed=ctx.seed), TrainConfig(epochs=epochs, lr=lr), ctx,
        evaluate=lambda m: task_metric(m, ctx.data, "val"), description=tag)


def find_ticket(model: nn.Module, cfg: PruneConfig, ctx: RunContext) -> PruneResult:
    """Find a ticket at ``cfg.sparsity`` (``cfg.lottery`` set); the result's model is the ticket, its extra models the
    dense run and the random re-init control, its details every round's test metric."""
    lot = cfg.lottery
    if lot is None:
        raise ValueError("find_ticket needs prune.lottery set; without it the mask method prunes the model as given.")
    if ctx.task != "classification":
        raise UnsupportedModuleError("lottery tickets need a labelled classification task to retrain on.")
    example = ctx.data.example_batch(2, split="val")
    ticket = reinit_(copy.deepcopy(model), ctx.seed)
    targets, skipped = select_mask_targets(ticket, cfg.layers, example, cfg.granularity, cfg.vector_size)
    if not targets:
        raise UnsupportedModuleError("nothing in this model can be pruned for a lottery ticket (no Linear/Conv layer besides the output).")
    seed_everything(ctx.seed)
    _train(ticket, ctx, lot.rewind_epoch, lot.lr, "lottery: to rewind point")
    rewind_state = snapshot(ticket)
    _train(ticket, ctx, lot.epochs - lot.rewind_epoch, lot.lr, "lottery: dense")
    dense = copy.deepcopy(ticket)
    rounds = [LotteryRound(0, 0.0, task_metric(ticket, ctx.data, "test"))]
    crit = build_importance("magnitude", p=cfg.p)
    for it in range(1, lot.iterations + 1):
        s = 1 - (1 - cfg.sparsity) ** (it / lot.iterations)
        masks = compute_masks({f: crit.masked_scores(f, m) for f, m in targets.items()}, targets, cfg.granularity, s,
                              cfg.scope, cfg.vector_size)
        for f, mask in masks.items():
            set_mask_(targets[f], mask)
        rewind_(ticket, rewind_state)
        _train(ticket, ctx, lot.epochs - lot.rewind_epoch, lot.lr, f"lottery: round {it}")
        rounds.append(LotteryRound(it, s, task_metric(ticket, ctx.data, "test")))
    details = LotteryDetails(skipped, rounds)
    extra_models = [("lottery_dense", dense)]
    if lot.control:
        control = copy.deepcopy(ticket)
        fresh = snapshot(reinit_(copy.deepcopy(dense), ctx.seed + 1))
        rewind_(control, fresh)
        _train(control, ctx, lot.epochs, lot.lr, "lottery: random re-init control")
        details.random_reinit_test = task_metric(control, ctx.data, "test")
        extra_models.append(("lottery_random_reinit", control))
    note = "lottery ticket search retrains from a fresh initialisation: the incoming weights are used only for the architecture."
    return PruneResult(ticket, details, [note], extra_models=extra_models)

"""The prune methods, one handler per :attr:`PruneConfig.kind`, in :data:`PRUNE_METHODS`.

A handler takes the model, its :class:`PruneConfig`, the run context and an example batch, prunes (in place, or
returns a new model) and hands back a :class:`PruneResult`; the stage turns that into its record. ``mask`` zeroes
weights through masks (a lottery-ticket search when ``prune.lottery`` is set), ``structured`` removes output
channels, ``transformer`` cuts heads, FFN neurons or whole blocks of a Hugging Face model. Mask and structured
pruning share the schedule: prune a step, recover, repeat, with per-layer ratios from the sensitivity scan when
asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import nn

from slimtorch.core import Batch, RunContext
from slimtorch.errors import UnsupportedModuleError
from slimtorch.prune.config import PruneConfig
from slimtorch.prune.details import PruneResult, RatioPlan, ScheduledDetails, ScheduleStep, SkippedLayer, skipped_reasons
from slimtorch.prune.importance import Importance, build_importance, calibrate
from slimtorch.prune.lottery import find_ticket
from slimtorch.prune.masks import bake_masks_, compute_masks, masked_modules, set_mask_, sparsity_report, weight_of
from slimtorch.prune.schedule import recover, sparsity_schedule, step_ratios
from slimtorch.prune.sensitivity import plan_ratios
from slimtorch.prune.structured import outcome, prune_structured_
from slimtorch.prune.targets import select_layers, select_mask_targets
from slimtorch.prune.transformers import family, prune_transformer
from slimtorch.train.loop import convergence_note


class PruneMethod(Protocol):
    """``(model, config, ctx, example batch) -> PruneResult``: one way of pruning."""

    def __call__(self, model: nn.Module, cfg: PruneConfig, ctx: RunContext, example: Batch) -> PruneResult: ...


def hf_structured_refusal(model: nn.Module, granularity: str) -> str:
    """Why channel removal is refused on a Hugging Face model, pointing only at granularities that accept it."""
    name = type(getattr(model, "hf", model)).__name__
    why = f"granularity {granularity!r} on Hugging Face {name}: removing channels would leave its config (heads, widths) out of step"
    for has_projections, use in ((True, "head, ffn or layer"), (False, "layer (whole blocks)")):
        try:
            fam = family(model.hf, has_projections=has_projections)  # type: ignore[arg-type]  # an HFModel's hf: AttributeError otherwise
        except (UnsupportedModuleError, AttributeError):
            continue
        return f"{why}; use {use}: they keep its {fam}-style config in step so it still saves and loads; or a mask granularity (weight, '2:4')."
    return f"{why}, and head/ffn/layer pruning does not know its layout. Use a mask granularity (weight, '2:4') instead."


def coverage_note(model: nn.Module, touched: dict[str, nn.Module], skipped: list[SkippedLayer], what: str) -> str | None:
    """A warning when the layers a stage changed hold under half of the model's weight matrices, naming the rest.

    Embedding tables are left out of the total: they are lookups, and no granularity prunes them.
    """
    tables = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters() if p.dim() >= 2 and id(p) not in tables)
    share = sum(weight_of(m).numel() for m in touched.values()) / max(total, 1)
    if share >= 0.5:
        return None
    reasons = skipped_reasons(skipped[:4]) + ("; ..." if len(skipped) > 4 else "")
    return (f"WARNING: only {share:.0%} of the model's weights sit in layers that {what}, so most of it is unchanged"
            + (f" (left alone: {reasons})." if reasons else "."))


# -- the schedule mask and structured pruning share ---------------------------------------------------

def _start(model: nn.Module, cfg: PruneConfig, ctx: RunContext, targets: dict[str, nn.Module], skipped: list[SkippedLayer]
           ) -> tuple[Importance, RatioPlan | None]:
    """Refuse a model with nothing to prune; build the criterion and, when asked, scan and plan per-layer ratios."""
    if not targets:
        reasons = skipped_reasons(skipped) or "it has no Linear or Conv layer"
        raise UnsupportedModuleError(f"nothing in this model can be pruned with granularity {cfg.granularity!r} ({reasons}).")
    crit = build_importance(cfg.criterion, p=cfg.p, seed=ctx.seed)
    if cfg.sensitivity is None and cfg.target is None:
        return crit, None
    return crit, plan_ratios(model, cfg, ctx, targets, crit)


def _run_schedule(model: nn.Module, cfg: PruneConfig, ctx: RunContext, targets: dict[str, nn.Module], crit: Importance,
                  prune_step: Callable[[int, float], None], notes: list[str]) -> list[ScheduleStep]:
    """Each step of the schedule: calibrate, ``prune_step(step, cumulative sparsity)``, recover."""
    teacher = ctx.teacher if cfg.recover == "distill" else None
    if cfg.recover == "distill" and teacher is None:
        notes.append("recover: distill was asked but the run has no teacher; recovered by fine-tuning on labels.")
    epochs = cfg.recovery_epochs
    if epochs and ctx.task != "classification" and teacher is None:
        notes.append("no recovery training: an embedding task needs a teacher to distil from (recover: distill).")
        epochs = 0
    schedule = sparsity_schedule(cfg.schedule, cfg.sparsity, cfg.steps)
    history = []
    for step, s in enumerate(schedule):
        calibrate(crit, model, targets, ctx, cfg.calibration_batches)
        prune_step(step, s)
        fit = recover(model, ctx, epochs=epochs, lr=cfg.lr, teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha,
                      checkpoint_dir=ctx.stage_dir("prune") / f"step{step}", description=f"prune step {step + 1}/{len(schedule)}")
        history.append(ScheduleStep(step + 1, s, fit))
        note = None if fit is None else convergence_note(fit, f"recovery after prune step {step + 1}/{len(schedule)}")
        if note and step == len(schedule) - 1:
            notes.append(note)
    return history


def _layer_schedules(cfg: PruneConfig, ratios: dict[str, float]) -> dict[str, list[float]]:
    """Each layer's cumulative sparsities over the schedule, towards its planned ratio."""
    return {f: sparsity_schedule(cfg.schedule, v, cfg.steps) for f, v in ratios.items()}


# -- the methods ----------------------------------------------------------------------------------------

def prune_masks(model: nn.Module, cfg: PruneConfig, ctx: RunContext, example: Batch) -> PruneResult:
    """The ``mask`` method: zero the lowest-scoring weights (weight, vector, kernel, N:M) at every step of the schedule."""
    if cfg.lottery is not None:
        return find_ticket(model, cfg, ctx)
    targets, skipped = select_mask_targets(model, cfg.layers, example, cfg.granularity, cfg.vector_size)
    crit, ratio_plan = _start(model, cfg, ctx, targets, skipped)
    ratios = None if ratio_plan is None else ratio_plan.ratios

    def mask_step(step: int, s: float) -> None:
        scores = {f: crit.masked_scores(f, m) for f, m in targets.items()}
        sparsity = s if ratios is None else {f: sched[step] for f, sched in _layer_schedules(cfg, ratios).items()}
        for f, mask in compute_masks(scores, targets, cfg.granularity, sparsity, cfg.scope, cfg.vector_size).items():
            set_mask_(targets[f], mask)

    notes: list[str] = []
    history = _run_schedule(model, cfg, ctx, targets, crit, mask_step, notes)
    if note := coverage_note(model, targets, skipped, "are masked"):
        notes.append(note)
    layers = sparsity_report(targets)
    total = sum(weight_of(m).numel() for m in targets.values())
    achieved = sum(layers[f] * weight_of(m).numel() for f, m in targets.items()) / total
    details = ScheduledDetails(skipped, history, ratio_plan, layer_sparsity=layers, achieved_sparsity=achieved)
    return PruneResult(model, details, notes)


def prune_channels(model: nn.Module, cfg: PruneConfig, ctx: RunContext, example: Batch) -> PruneResult:
    """The ``structured`` method: remove output channels (filter, channel, neuron) and all that is coupled to them."""
    if hasattr(model, "hf"):
        raise UnsupportedModuleError(hf_structured_refusal(model, cfg.granularity))
    notes: list[str] = []
    if masked_modules(model):
        bake_masks_(model)
        notes.append("earlier weight masks were baked before removing structure.")
    targets, skipped = select_layers(model, cfg.layers, example)
    crit, ratio_plan = _start(model, cfg, ctx, targets, skipped)
    ratios = None if ratio_plan is None else ratio_plan.ratios
    schedule = sparsity_schedule(cfg.schedule, cfg.sparsity, cfg.steps)
    channels: dict[str, tuple[int, int]] = {}

    def removal_step(step: int, s: float) -> None:
        per_layer = None if ratios is None else {f: step_ratios(v)[step] for f, v in _layer_schedules(cfg, ratios).items()}
        done = prune_structured_(model, example, crit.tp_importance(), targets, step_ratios(schedule)[step], ratio_dict=per_layer,
                                 round_to=cfg.round_to, scope=cfg.scope)
        channels.update({f: (channels.get(f, c)[0], c[1]) for f, c in done.channels.items()})
        skipped.extend(SkippedLayer(f, reason) for f, reason in done.unchanged.items() if not any(sk.fqn == f for sk in skipped))
        notes.extend(n for n in done.notes if n not in notes)

    history = _run_schedule(model, cfg, ctx, targets, crit, removal_step, notes)
    status, outcome_notes = outcome(channels, skipped)
    notes.extend(outcome_notes)
    changed = {f: m for f, m in targets.items() if channels[f][0] != channels[f][1]}
    if (note := coverage_note(model, changed, skipped, "lost channels")) and status != "nothing pruned":
        notes.append(note)
    return PruneResult(model, ScheduledDetails(skipped, history, ratio_plan, channels=channels), notes, status)


# PruneConfig.kind -> its handler.
PRUNE_METHODS: dict[str, PruneMethod] = {"mask": prune_masks, "structured": prune_channels, "transformer": prune_transformer}

"""The ``prune`` stage: score, remove (masks, structure or transformer parts), recover, report honestly.

The work is done by the method :data:`~slimtorch.prune.methods.PRUNE_METHODS` holds for ``config.kind``; the stage
measures around it, bakes masks when asked, and builds its record from the method's typed result.
"""

from __future__ import annotations

import logging

from torch import nn

from slimtorch.core import RunContext, Stage, StageRecord, seed_everything
from slimtorch.measure.efficiency import lags_mac_cut, speedup_efficiency
from slimtorch.measure.latency import quick_latency_ms
from slimtorch.measure.macs import QuickCounts, quick_counts
from slimtorch.prune.config import PruneConfig, PruneTargetConfig, parse_nm
from slimtorch.prune.details import MaskSpeed, MeasuredSpeed, PruneDetails, TargetReached
from slimtorch.prune.masks import bake_masks_
from slimtorch.prune.methods import PRUNE_METHODS

log = logging.getLogger(__name__)

MASK_NOTE = (
    "{what} sparsity gives no speedup on dense CPU kernels: the model still runs {macs:.3g} MACs per example, "
    "exactly as before. Its win is size after compression (sparse or zipped storage){extra}."
)


class PruneStage(Stage[PruneConfig], kind="prune"):
    """Prune a model; see :class:`PruneConfig` for every option.

    Example:
        >>> model, record = PruneStage(PruneConfig(sparsity=0.5)).apply(model, ctx)  # doctest: +SKIP
    """

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        cfg = self.config
        seed_everything(ctx.seed + 7)
        example = ctx.data.example_batch(2, split="val")
        before = quick_counts(model, example)
        latency_before = quick_latency_ms(model, ctx.data.example_batch(1, split="val")) if cfg.kind != "mask" else None
        result = PRUNE_METHODS[cfg.kind](model, cfg, ctx, example)
        model, notes = result.model, list(result.notes)
        if cfg.bake:
            bake_masks_(model)
            notes.append("masks were baked into the weights: later training may revive pruned weights.")
        after = quick_counts(model, example)
        if latency_before is None:
            speed: MaskSpeed | MeasuredSpeed = MaskSpeed(before.macs / max(after.nonzero_macs, 1))
            notes.append(mask_note(cfg.granularity, after.macs))
        else:
            speed = measured_speed(before, after, latency_before, quick_latency_ms(model, ctx.data.example_batch(1, split="val")))
            notes += [n for n in [speed_note(speed)] if n]
        target = None
        if cfg.target is not None:
            target = target_reached(cfg.target, before, after, speed)
            notes += [n for n in [target_note(cfg.target, target)] if n]
        details = PruneDetails(result.details, before, after, speed, target)
        record = self.record(status=result.status or "done", notes=notes, details=details.to_json(),
                             extra_models=list(result.extra_models))
        return model.eval(), record


def mask_note(granularity: str, macs: float) -> str:
    """Masks run dense: the note saying so (their win is size), for ``macs`` per example."""
    nm = parse_nm(granularity)
    what = f"{granularity} (N:M)" if nm else ("Unstructured" if granularity == "weight" else f"{granularity.capitalize()}-level")
    extra = "; N:M patterns run faster only on sparse tensor cores (e.g. NVIDIA Ampere 2:4), not on this CPU" if nm else ""
    return MASK_NOTE.format(what=what, macs=macs, extra=extra)


def measured_speed(before: QuickCounts, after: QuickCounts, latency_before: float, latency_after: float) -> MeasuredSpeed:
    """The batch-1 speedup of removed structure, beside its MAC cut."""
    mac_reduction = before.macs / max(after.macs, 1)
    speedup = latency_before / max(latency_after, 1e-9)
    return MeasuredSpeed(latency_before, latency_after, mac_reduction, speedup, speedup_efficiency(mac_reduction, speedup))


def speed_note(speed: MeasuredSpeed) -> str | None:
    """A note when the measured speedup lags far behind the MAC cut."""
    if not lags_mac_cut(speed.mac_reduction, speed.latency_speedup_b1):
        return None
    return (f"measured speedup at batch 1 ({speed.latency_speedup_b1:.2f}×, eager torch) is far below the MAC reduction "
            f"({speed.mac_reduction:.2f}×): small layers are bound by per-op overhead; larger batches or onnxruntime usually get closer.")


def target_reached(target: PruneTargetConfig, before: QuickCounts, after: QuickCounts, speed: MaskSpeed | MeasuredSpeed) -> TargetReached:
    """How close the stage came to ``prune.target``: the fraction kept, or ms as recorded (masks are not timed: ``None``)."""
    if target.kind == "latency_ms":
        # the recorded figure (4 decimals), as the report shows it
        return TargetReached(round(speed.latency_ms_after_b1, 4) if isinstance(speed, MeasuredSpeed) else None)
    kept, whole = (after.nonzero_params, before.nonzero_params) if target.kind == "params" else (after.macs, before.macs)
    return TargetReached(kept / max(whole, 1))


def target_note(target: PruneTargetConfig, reached: TargetReached) -> str | None:
    """A note when the stage stopped short of ``prune.target``."""
    got, goal = reached.achieved, target.value
    if got is None or got <= goal * 1.05:
        return None
    return (f"target {target.kind}={goal:g} was not fully reached ({got:.3g}): the scanned sparsities or channel coupling "
            "limit how far the chosen layers can go; add higher sensitivity.sparsities or loosen layers.exclude.")

"""The ``prune`` stage: score, remove (masks, structure or transformer parts), recover, report honestly."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from slimtorch.core import RunContext, Stage, StageRecord, seed_everything
from slimtorch.errors import UnsupportedModuleError
from slimtorch.measure.efficiency import lags_mac_cut, speedup_efficiency
from slimtorch.measure.latency import quick_latency_ms
from slimtorch.measure.macs import QuickCounts, quick_counts
from slimtorch.prune.config import PruneConfig, PruneTargetConfig, parse_nm
from slimtorch.prune.importance import Importance, build_importance, calibrate
from slimtorch.prune.masks import bake_masks_, compute_masks, masked_modules, set_mask_, sparsity_report, weight_of
from slimtorch.prune.schedule import recover, sparsity_schedule, step_ratios
from slimtorch.prune.structured import outcome as structured_outcome
from slimtorch.prune.structured import prune_structured_
from slimtorch.prune.targets import select_layers, select_mask_targets
from slimtorch.train.loop import convergence_note

log = logging.getLogger(__name__)

MASK_NOTE = (
    "{what} sparsity gives no speedup on dense CPU kernels: the model still runs {macs:.3g} MACs per example, "
    "exactly as before. Its win is size after compression (sparse or zipped storage){extra}."
)


def hf_structured_refusal(model: nn.Module, granularity: str) -> str:
    """Why channel removal is refused on a Hugging Face model, pointing only at granularities that accept it."""
    from slimtorch.prune.transformers import family

    name = type(getattr(model, "hf", model)).__name__
    why = f"granularity {granularity!r} on Hugging Face {name}: removing channels would leave its config (heads, widths) out of step"
    for has_projections, use in ((True, "head, ffn or layer"), (False, "layer (whole blocks)")):
        try:
            fam = family(model.hf, has_projections=has_projections)  # type: ignore[arg-type]  # an HFModel's hf: AttributeError otherwise
        except (UnsupportedModuleError, AttributeError):
            continue
        return f"{why}; use {use}: they keep its {fam}-style config in step so it still saves and loads; or a mask granularity (weight, '2:4')."
    return f"{why}, and head/ffn/layer pruning does not know its layout. Use a mask granularity (weight, '2:4') instead."


def coverage_note(model: nn.Module, touched: dict[str, nn.Module], skipped: list[dict[str, str]], what: str) -> str | None:
    """A warning when the layers a stage changed hold under half of the model's weight matrices, naming the rest.

    Embedding tables are left out of the total: they are lookups, and no granularity prunes them.
    """
    tables = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters() if p.dim() >= 2 and id(p) not in tables)
    share = sum(weight_of(m).numel() for m in touched.values()) / max(total, 1)
    if share >= 0.5:
        return None
    reasons = "; ".join(f"{s['fqn']}: {s['reason']}" for s in skipped[:4]) + ("; ..." if len(skipped) > 4 else "")
    return (f"WARNING: only {share:.0%} of the model's weights sit in layers that {what}, so most of it is unchanged"
            + (f" (left alone: {reasons})." if reasons else "."))


class PruneStage(Stage[PruneConfig], kind="prune"):
    """Prune a model; see :class:`PruneConfig` for every option.

    Example:
        >>> model, record = PruneStage(PruneConfig(sparsity=0.5)).apply(model, ctx)  # doctest: +SKIP
    """

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        cfg = self.config
        seed_everything(ctx.seed + 7)
        record = self.record()
        example = ctx.data.example_batch(2, split="val")
        before = quick_counts(model, example)
        latency_before = quick_latency_ms(model, ctx.data.example_batch(1, split="val")) if cfg.kind != "mask" else None
        if cfg.lottery is not None:
            from slimtorch.prune.lottery import run_lottery

            model = run_lottery(model, cfg, ctx, record)
        elif cfg.kind == "transformer":
            from slimtorch.prune.transformers import prune_transformer_stage

            prune_transformer_stage(model, cfg, ctx, record, self._importance(model, ctx))
        else:
            self._prune(model, ctx, record, example)
        if cfg.bake:
            bake_masks_(model)
            record.notes.append("masks were baked into the weights: later training may revive pruned weights.")
        after = quick_counts(model, example)
        record.details.update({"params_before": before.params, "params_after": after.params,
                               "nonzero_params_before": before.nonzero_params, "nonzero_params_after": after.nonzero_params,
                               "macs_before": before.macs, "macs_after": after.macs,
                               "nonzero_macs_after": after.nonzero_macs})
        self._honesty(model, ctx, record, before, after, latency_before)
        if cfg.target is not None:
            self._target_note(cfg.target, record, before, after)
        return model.eval(), record

    # -- helpers ---------------------------------------------------------------------------------

    def _importance(self, model: nn.Module, ctx: RunContext) -> Importance:
        return build_importance(self.config.criterion, p=self.config.p, seed=ctx.seed)

    def _calibrate(self, crit: Importance, model: nn.Module, targets: dict[str, nn.Module], ctx: RunContext) -> None:
        calibrate(crit, model, targets, ctx, self.config.calibration_batches)

    def _prune(self, model: nn.Module, ctx: RunContext, record: StageRecord, example: Any) -> None:
        cfg = self.config
        if cfg.kind == "structured" and hasattr(model, "hf"):
            raise UnsupportedModuleError(hf_structured_refusal(model, cfg.granularity))
        if cfg.kind == "structured" and masked_modules(model):
            bake_masks_(model)
            record.notes.append("earlier weight masks were baked before removing structure.")
        if cfg.kind == "mask":
            targets, skipped = select_mask_targets(model, cfg.layers, example, cfg.granularity, cfg.vector_size)
        else:
            targets, skipped = select_layers(model, cfg.layers, example)
        record.details["skipped"] = skipped
        if not targets:
            reasons = "; ".join(f"{s['fqn']}: {s['reason']}" for s in skipped) or "it has no Linear or Conv layer"
            raise UnsupportedModuleError(f"nothing in this model can be pruned with granularity {cfg.granularity!r} ({reasons}).")
        crit = self._importance(model, ctx)
        ratios = None
        if cfg.sensitivity is not None or cfg.target is not None:
            from slimtorch.prune.sensitivity import plan_ratios

            ratios = plan_ratios(model, cfg, ctx, targets, crit, record)
        teacher = ctx.teacher if cfg.recover == "distill" else None
        if cfg.recover == "distill" and teacher is None:
            record.notes.append("recover: distill was asked but the run has no teacher; recovered by fine-tuning on labels.")
        epochs = cfg.recovery_epochs
        if epochs and ctx.task != "classification" and teacher is None:
            record.notes.append("no recovery training: an embedding task needs a teacher to distil from (recover: distill).")
            epochs = 0
        schedule = sparsity_schedule(cfg.schedule, cfg.sparsity, cfg.steps)
        history = []
        for step, s in enumerate(schedule):
            self._calibrate(crit, model, targets, ctx)
            if cfg.kind == "mask":
                self._mask_step(model, targets, crit, s, ratios, step, len(schedule))
            else:
                r = step_ratios(schedule)[step]
                ratio_dict = None if ratios is None else {f: step_ratios(sparsity_schedule(cfg.schedule, v, cfg.steps))[step] for f, v in ratios.items()}
                result = prune_structured_(model, example, crit.tp_importance(), targets, r, ratio_dict=ratio_dict,
                                           round_to=cfg.round_to, scope=cfg.scope)
                record.details["channels"] = {f: [record.details.get("channels", {}).get(f, c)[0], c[1]] for f, c in result["channels"].items()}
                for f, reason in result["unchanged"].items():
                    if not any(sk["fqn"] == f for sk in skipped):
                        skipped.append({"fqn": f, "reason": reason})
                record.notes.extend(n for n in result["notes"] if n not in record.notes)
            fit = recover(model, ctx, epochs=epochs, lr=cfg.lr, teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha,
                          checkpoint_dir=ctx.stage_dir(self.name) / f"step{step}", description=f"prune step {step + 1}/{len(schedule)}")
            history.append({"step": step + 1, "sparsity": round(s, 4), "val": None if fit is None else fit.best_metric,
                            **({} if fit is None else fit.summary())})
            note = None if fit is None else convergence_note(fit, f"recovery after prune step {step + 1}/{len(schedule)}")
            if note and step == len(schedule) - 1:
                record.notes.append(note)
        record.details["schedule"] = history
        if cfg.kind == "structured":
            status, notes = structured_outcome(record.details["channels"], skipped)
            record.status = status or record.status
            record.notes.extend(notes)
            changed = [f for f, (before, after) in record.details["channels"].items() if before != after]
            note = coverage_note(model, {f: m for f, m in targets.items() if f in changed}, skipped, "lost channels")
        else:
            note = coverage_note(model, targets, skipped, "are masked")
        if note and record.status != "nothing pruned":
            record.notes.append(note)
        if history and "converged_epoch" in history[-1]:
            record.details["converged_epoch"] = history[-1]["converged_epoch"]
        if cfg.kind == "mask":
            layers = sparsity_report(targets)
            record.details["layer_sparsity"] = {f: round(v, 4) for f, v in layers.items()}
            total = sum(weight_of(m).numel() for m in targets.values())
            record.details["achieved_sparsity"] = round(sum(layers[f] * weight_of(m).numel() for f, m in targets.items()) / total, 4)

    def _mask_step(self, model: nn.Module, targets: dict[str, nn.Module], crit: Importance, s: float,
                   ratios: dict[str, float] | None, step: int, steps: int) -> None:
        cfg = self.config
        scores = {f: crit.masked_scores(f, m) for f, m in targets.items()}
        if ratios is not None:
            sparsity: float | dict[str, float] = {f: sparsity_schedule(cfg.schedule, v, cfg.steps)[step] for f, v in ratios.items()}
        else:
            sparsity = s
        masks = compute_masks(scores, targets, cfg.granularity, sparsity, cfg.scope, cfg.vector_size)
        for f, mask in masks.items():
            set_mask_(targets[f], mask)

    def _target_note(self, target: PruneTargetConfig, record: StageRecord, before: QuickCounts, after: QuickCounts) -> None:
        if target.kind == "latency_ms":
            got, goal = record.details.get("latency_ms_after_b1"), target.value
        else:
            pair = (after.nonzero_params, before.nonzero_params) if target.kind == "params" else (after.macs, before.macs)
            got, goal = pair[0] / max(pair[1], 1), target.value
        record.details["target_achieved"] = None if got is None else round(got, 4)
        if got is not None and got > goal * 1.05:
            record.notes.append(
                f"target {target.kind}={goal:g} was not fully reached ({got:.3g}): the scanned sparsities or channel coupling "
                "limit how far the chosen layers can go; add higher sensitivity.sparsities or loosen layers.exclude."
            )

    def _honesty(self, model: nn.Module, ctx: RunContext, record: StageRecord, before: QuickCounts, after: QuickCounts,
                 latency_before: float | None) -> None:
        cfg = self.config
        if cfg.kind == "mask":
            nm = parse_nm(cfg.granularity)
            what = f"{cfg.granularity} (N:M)" if nm else ("Unstructured" if cfg.granularity == "weight" else f"{cfg.granularity.capitalize()}-level")
            extra = "; N:M patterns run faster only on sparse tensor cores (e.g. NVIDIA Ampere 2:4), not on this CPU" if nm else ""
            record.notes.append(MASK_NOTE.format(what=what, macs=after.macs, extra=extra))
            record.details["mac_reduction_if_sparse_kernels"] = round(before.macs / max(after.nonzero_macs, 1), 3)
            return
        assert latency_before is not None, "apply times the model before pruning for every kind but mask"
        latency_after = quick_latency_ms(model, ctx.data.example_batch(1, split="val"))
        mac_reduction = before.macs / max(after.macs, 1)
        speedup = latency_before / max(latency_after, 1e-9)
        record.details.update({"latency_ms_before_b1": round(latency_before, 4), "latency_ms_after_b1": round(latency_after, 4),
                               "mac_reduction": round(mac_reduction, 3), "latency_speedup_b1": round(speedup, 3)})
        efficiency = speedup_efficiency(mac_reduction, speedup)
        record.details["speedup_efficiency_b1"] = None if efficiency is None else round(efficiency, 3)
        if lags_mac_cut(mac_reduction, speedup):
            record.notes.append(
                f"measured speedup at batch 1 ({speedup:.2f}×, eager torch) is far below the MAC reduction ({mac_reduction:.2f}×): "
                "small layers are bound by per-op overhead; larger batches or onnxruntime usually get closer."
            )

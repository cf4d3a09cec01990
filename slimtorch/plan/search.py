"""Budget-driven planning: measure real candidates, pick the one that meets the budget with least loss.

For each structured-pruning ratio × quantization option the planner builds the candidate (one-shot
pruning through the ``prune`` stage, quantization through the ``quantize`` stage), then *measures*
p50 latency at the target batch on the target runtime (all candidates and the original timed together in
interleaved rounds), bytes on disk, and validation accuracy before
recovery (the predicted loss). The feasible candidate with the highest predicted accuracy wins; when
none is feasible the plan says so and keeps the candidate closest to the budget. The chosen point
becomes ordinary recipe stages, so the run, its resume and its report are those of any recipe.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from slimtorch import artifact
from slimtorch.core import RunContext, Stage
from slimtorch.export import ExportConfig, to_ort
from slimtorch.measure import dir_size_bytes
from slimtorch.measure.accuracy import task_metric
from slimtorch.measure.latency import time_interleaved
from slimtorch.plan.config import TargetConfig
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.run.loop import run_stages
from slimtorch.units import MB

if TYPE_CHECKING:
    from slimtorch.recipe.schema import StageSpec

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """The planner's decision and the evidence for it."""

    prune: dict[str, Any] | None
    quantize: dict[str, Any] | None
    export: dict[str, Any] | None
    is_feasible: bool
    message: str
    baseline_latency_ms: float
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"prune": self.prune, "quantize": self.quantize, "export": self.export, "is_feasible": self.is_feasible, "message": self.message,
                "baseline_latency_ms": self.baseline_latency_ms, "candidates": self.candidates}

    def stages(self, recovery: list[StageSpec]) -> list[StageSpec]:
        """prune → recovery (the recipe's own stages, or a short fine-tune) → quantize."""
        # Imported here, not at the top: importing slimtorch.recipe.schema imports slimtorch.plan (the
        # recipe's `target:` block), which imports this module before StageSpec exists.
        from slimtorch.recipe.schema import StageSpec

        out: list[StageSpec] = []
        if self.prune:
            out.append(StageSpec(kind="prune", config=PruneConfig(**self.prune)))
            out.extend(recovery)
        if self.quantize:
            out.append(StageSpec(kind="quantize", config=QuantizeConfig(**self.quantize)))
        elif self.export is not None:
            out.append(StageSpec(kind="export", config=ExportConfig(**self.export)))
        return out


def _budget_value(target: TargetConfig, latency_ms: float, size_bytes: int, baseline_ms: float) -> tuple[float, float]:
    """(achieved, budget) in the budget's own unit, lower achieved is better."""
    if target.kind == "latency_ms":
        return latency_ms, float(target.latency_ms or 0)
    if target.kind == "size_mb":
        return size_bytes / MB, float(target.size_mb or 0)
    return latency_ms, baseline_ms / float(target.speedup or 1)


def _candidate_stages(sparsity: float, quant: str, target: TargetConfig
                      ) -> tuple[list[Stage[Any]], dict[str, Any] | None, dict[str, Any] | None]:
    """The stages that build one candidate (one-shot pruning, then int8), and their configs."""
    stages: list[Stage[Any]] = []
    prune_cfg = quant_cfg = None
    if sparsity > 0:
        prune_cfg = {"sparsity": sparsity, "granularity": target.granularity, "round_to": target.round_to, "recover": "none",
                     "criterion": target.prune_criterion}
        stages.append(PruneStage(PruneConfig(**prune_cfg)))
    if quant != "none":
        quant_cfg = {"mode": quant, "runtime": "onnxruntime", **target.quantize_args}
        stages.append(QuantizeStage(QuantizeConfig(**quant_cfg)))
    return stages, prune_cfg, quant_cfg


def plan(model: nn.Module, ctx: RunContext, target: TargetConfig, threads: int = 1) -> Plan:
    """Search pruning ratio × quantization for ``target`` by measuring every candidate.

    Raises:
        slimtorch.errors.RecipeError: (from the stages) when the model cannot be pruned structurally.
    """
    example = ctx.data.example_batch(target.batch)
    rows: list[dict[str, Any]] = []
    built: list[nn.Module] = []
    for sparsity in target.sparsities:
        for quant in target.quantize:
            if target.runtime == "torch" and quant != "none":
                continue  # int8 here runs in onnxruntime; a torch-only target keeps fp32
            stages, prune_cfg, quant_cfg = _candidate_stages(sparsity, quant, target)
            # The run loop without a store: nothing saved or resumed, and no reseeding between candidates.
            candidate = run_stages(copy.deepcopy(model), stages, ctx, reseed=False).model
            if quant_cfg is None and target.runtime == "onnxruntime":
                # An fp32 candidate is timed on onnxruntime, as the chosen plan's export stage will run it.
                candidate = to_ort(candidate.eval(), ctx.data.example_batch(2))
            with tempfile.TemporaryDirectory() as tmp:
                artifact.save(candidate, Path(tmp) / "m")
                size = dir_size_bytes(Path(tmp) / "m")
            accuracy = task_metric(candidate, ctx.data, "val", reference=ctx.teacher)
            built.append(candidate)
            rows.append({"sparsity": sparsity, "quantize": quant, "size_bytes": size, "val_metric_before_recovery": accuracy,
                         "_prune": prune_cfg, "_quantize": quant_cfg})
    # The original and every candidate timed together in interleaved rounds: a ratio (and a budget near the baseline)
    # then compares models, not moments of a shared machine.
    timings = time_interleaved([(m, {"b": example}) for m in [model, *built]], warmup=10, repeats=target.repeats, threads=threads)
    baseline_ms = timings[0]["b"]["p50"]
    for r, timing in zip(rows, timings[1:]):
        r["latency_ms"] = timing["b"]["p50"]
        achieved, budget = _budget_value(target, r["latency_ms"], r["size_bytes"], baseline_ms)
        r["meets_budget"] = achieved <= budget
        log.info("plan candidate sparsity=%.2f quantize=%s: %.4f ms, %d bytes, val %.4f", r["sparsity"], r["quantize"],
                 r["latency_ms"], r["size_bytes"], r["val_metric_before_recovery"])
    feasible = [r for r in rows if r["meets_budget"]]
    if target.min_accuracy is not None:
        # Prefer candidates that already clear the floor before recovery; recovery only adds accuracy.
        above = [r for r in feasible if r["val_metric_before_recovery"] >= target.min_accuracy]
        feasible = above or feasible
    unit = {"latency_ms": "ms", "size_mb": "MB", "speedup": "ms"}[target.kind]
    if feasible:
        best = max(feasible, key=lambda r: (r["val_metric_before_recovery"], -r["latency_ms"]))
        achieved, budget = _budget_value(target, best["latency_ms"], best["size_bytes"], baseline_ms)
        message = (f"budget {target.kind}≤{budget:.4g} {unit} met by sparsity {best['sparsity']} + quantize {best['quantize']}: "
                   f"{achieved:.4g} {unit} measured, val {best['val_metric_before_recovery']:.4f} before recovery.")
    else:
        # Closest to the budget, among the candidates above the accuracy floor when there are any.
        pool = [r for r in rows if target.min_accuracy is None or r["val_metric_before_recovery"] >= target.min_accuracy] or rows
        best = min(pool, key=lambda r: _budget_value(target, r["latency_ms"], r["size_bytes"], baseline_ms)[0])
        achieved, budget = _budget_value(target, best["latency_ms"], best["size_bytes"], baseline_ms)
        message = (f"budget {target.kind}≤{budget:.4g} {unit} cannot be met by any candidate searched; the closest is sparsity "
                   f"{best['sparsity']} + quantize {best['quantize']} at {achieved:.4g} {unit}. Widen target.sparsities, add "
                   "quantization, or relax the budget.")
    for r in rows:
        r["chosen"] = r is best
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    export: dict[str, Any] | None = {} if target.runtime == "onnxruntime" and best["_quantize"] is None else None
    return Plan(prune=best["_prune"], quantize=best["_quantize"], export=export, is_feasible=bool(feasible), message=message,
                baseline_latency_ms=baseline_ms, candidates=public)

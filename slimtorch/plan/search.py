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
import dataclasses
import logging
import tempfile
from dataclasses import asdict, field, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from pydantic.dataclasses import dataclass
from torch import nn

from slimtorch import artifact
from slimtorch.core import RunContext, Stage
from slimtorch.errors import RecipeError, SizeTargetError, UnsupportedModuleError
from slimtorch.export import ExportConfig, ExportStage, to_ort
from slimtorch.measure import dir_size_bytes
from slimtorch.measure.accuracy import task_metric
from slimtorch.measure.config import LLMEvalConfig
from slimtorch.measure.latency import time_interleaved
from slimtorch.measure.llm import causal_lm_of, eval_token_ids, scored_logprobs
from slimtorch.plan.config import QuantizeOption, TargetConfig
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.recipe.schema import StageSpec
from slimtorch.run.loop import run_stages
from slimtorch.units import MB

log = logging.getLogger(__name__)


# The settings the planner gives a pruning candidate, in the order report.json lists them.
PRUNE_SETTINGS = ("sparsity", "granularity", "round_to", "recover", "criterion")


def settings_json(config: BaseModel, first: tuple[str, ...]) -> dict[str, Any]:
    """The settings ``config`` was given (``first`` in that order, then the rest in field order), as report.json lists them."""
    given = config.model_dump(mode="json", exclude_unset=True)
    return {**{k: given[k] for k in first if k in given}, **given}


@dataclass(frozen=True)
class Candidate:
    """One measured point of the search: a row of the plan's ``candidates`` in report.json.

    ``quantize`` is the int8 mode tried (``"none"`` for fp32); ``val_metric_before_recovery`` is the predicted
    accuracy (or cosine); ``latency_ms`` is p50 at the target batch, timed beside the original.
    """

    sparsity: float
    quantize: str
    size_bytes: int
    val_metric_before_recovery: float
    latency_ms: float | None  # None: not timed by the planner (a llama.cpp file: its card times it in llama.cpp)
    meets_budget: bool
    chosen: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """The planner's decision and the evidence for it: the chosen stages' configs and every candidate measured.

    Built from report.json or ``state.json`` through :meth:`from_json`; being a pydantic dataclass it also validates
    the same dict passed as keyword arguments (``Plan(**plan.to_json())``).
    """

    prune: PruneConfig | None
    quantize: QuantizeConfig | None
    export: ExportConfig | None
    is_feasible: bool
    message: str
    baseline_latency_ms: float
    candidates: list[Candidate] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"prune": None if self.prune is None else settings_json(self.prune, PRUNE_SETTINGS),
                "quantize": None if self.quantize is None else settings_json(self.quantize, ("mode", "runtime")),
                "export": None if self.export is None else settings_json(self.export, ()),
                "is_feasible": self.is_feasible, "message": self.message, "baseline_latency_ms": self.baseline_latency_ms,
                "candidates": [c.to_json() for c in self.candidates]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        """A plan as :meth:`to_json` wrote it (the configs validated again)."""
        return cls(**raw)

    def stages(self, recovery: list[StageSpec]) -> list[StageSpec]:
        """prune → recovery (the recipe's own stages, or a short fine-tune) → quantize."""
        out: list[StageSpec] = []
        if self.prune is not None:
            out.append(StageSpec(kind="prune", config=self.prune))
            out.extend(recovery)
        if self.quantize is not None:
            out.append(StageSpec(kind="quantize", config=self.quantize))
        elif self.export is not None:
            out.append(StageSpec(kind="export", config=self.export))
        return out


def _budget_value(target: TargetConfig, latency_ms: float, size_bytes: int, baseline_ms: float) -> tuple[float, float]:
    """(achieved, budget) in the budget's own unit, lower achieved is better."""
    if target.kind == "latency_ms":
        return latency_ms, float(target.latency_ms or 0)
    if target.kind == "size_mb":
        return size_bytes / MB, float(target.size_mb or 0)
    return latency_ms, baseline_ms / float(target.speedup or 1)


def _candidate_stages(sparsity: float, quant: QuantizeOption, target: TargetConfig
                      ) -> tuple[list[Stage[Any]], PruneConfig | None, QuantizeConfig | None]:
    """The stages that build one candidate (one-shot pruning, then int8), and their configs."""
    prune_cfg = quant_cfg = None
    if sparsity > 0:
        prune_cfg = PruneConfig(sparsity=sparsity, granularity=target.search_granularity, round_to=target.round_to, recover="none",
                                criterion=target.prune_criterion)
    if quant != "none":
        quant_cfg = QuantizeConfig(mode=quant, runtime="onnxruntime", **target.quantize_args)
    stages: list[Stage[Any]] = [*([PruneStage(prune_cfg)] if prune_cfg else []), *([QuantizeStage(quant_cfg)] if quant_cfg else [])]
    return stages, prune_cfg, quant_cfg


@dataclasses.dataclass(frozen=True)
class _Built:
    """A candidate built and measured but not yet timed: how it was made, its size and predicted accuracy."""

    sparsity: float
    quantize: QuantizeOption
    prune_cfg: PruneConfig | None
    quant_cfg: QuantizeConfig | None
    size_bytes: int
    val_metric: float


def _build(model: nn.Module, ctx: RunContext, target: TargetConfig, sparsity: float, quant: QuantizeOption) -> tuple[nn.Module, _Built]:
    """One candidate through the stages (no store: nothing saved or resumed, no reseeding), its size and val metric."""
    stages, prune_cfg, quant_cfg = _candidate_stages(sparsity, quant, target)
    candidate = run_stages(copy.deepcopy(model), stages, ctx, reseed=False).model
    if quant_cfg is None and target.runtime == "onnxruntime":
        # An fp32 candidate is timed on onnxruntime, as the chosen plan's export stage will run it.
        candidate = to_ort(candidate.eval(), ctx.data.example_batch(2))
    with tempfile.TemporaryDirectory() as tmp:
        artifact.save(candidate, Path(tmp) / "m")
        size = dir_size_bytes(Path(tmp) / "m")
    accuracy = task_metric(candidate, ctx.data, "val", reference=ctx.teacher)
    return candidate, _Built(sparsity, quant, prune_cfg, quant_cfg, size, accuracy)


def _choose(target: TargetConfig, rows: list[Candidate], baseline_ms: float) -> tuple[int, bool, str]:
    """(index of the chosen candidate, whether it meets the budget, the plan's message)."""
    def achieved(r: Candidate) -> float:
        return _budget_value(target, r.latency_ms or 0.0, r.size_bytes, baseline_ms)[0]

    floor = target.min_accuracy
    feasible = [r for r in rows if r.meets_budget]
    if floor is not None:
        # Prefer candidates that already clear the floor before recovery; recovery only adds accuracy.
        feasible = [r for r in feasible if r.val_metric_before_recovery >= floor] or feasible
    unit = {"latency_ms": "ms", "size_mb": "MB", "speedup": "ms"}[target.kind]
    budget = _budget_value(target, 0.0, 0, baseline_ms)[1]
    if feasible:
        best = max(feasible, key=lambda r: (r.val_metric_before_recovery, -(r.latency_ms or 0.0)))
        message = (f"budget {target.kind}≤{budget:.4g} {unit} met by sparsity {best.sparsity} + quantize {best.quantize}: "
                   f"{achieved(best):.4g} {unit} measured, val {best.val_metric_before_recovery:.4f} before recovery.")
    else:
        # Closest to the budget, among the candidates above the accuracy floor when there are any.
        pool = [r for r in rows if floor is None or r.val_metric_before_recovery >= floor] or rows
        best = min(pool, key=achieved)
        message = (f"budget {target.kind}≤{budget:.4g} {unit} cannot be met by any candidate searched; the closest is sparsity "
                   f"{best.sparsity} + quantize {best.quantize} at {achieved(best):.4g} {unit}. Widen target.sparsities, add "
                   "quantization, or relax the budget.")
    return next(i for i, r in enumerate(rows) if r is best), bool(feasible), message


def plan(model: nn.Module, ctx: RunContext, target: TargetConfig, threads: int = 1) -> Plan:
    """Search pruning ratio × quantization for ``target`` by measuring every candidate.

    Raises:
        slimtorch.errors.RecipeError: (from the stages) when the model cannot be pruned structurally.
    """
    if target.runtime == "llama.cpp":
        return _plan_gguf(model, ctx, target)
    example = ctx.data.example_batch(target.batch)
    built: list[_Built] = []
    models: list[nn.Module] = []
    for sparsity in target.sparsities:
        for quant in target.quantize:
            if target.runtime == "torch" and quant != "none":
                continue  # int8 here runs in onnxruntime; a torch-only target keeps fp32
            candidate, facts = _build(model, ctx, target, sparsity, quant)
            models.append(candidate)
            built.append(facts)
    # The original and every candidate timed together in interleaved rounds: a ratio (and a budget near the baseline)
    # then compares models, not moments of a shared machine.
    timings = time_interleaved([(m, {"b": example}) for m in [model, *models]], warmup=10, repeats=target.repeats, threads=threads)
    baseline_ms = timings[0]["b"].p50
    rows = []
    for b, timing in zip(built, timings[1:]):
        latency_ms = timing["b"].p50
        achieved, budget = _budget_value(target, latency_ms, b.size_bytes, baseline_ms)
        rows.append(Candidate(b.sparsity, b.quantize, b.size_bytes, b.val_metric, latency_ms, achieved <= budget))
        log.info("plan candidate sparsity=%.2f quantize=%s: %.4f ms, %d bytes, val %.4f", b.sparsity, b.quantize,
                 latency_ms, b.size_bytes, b.val_metric)
    chosen, is_feasible, message = _choose(target, rows, baseline_ms)
    rows = [replace(r, chosen=i == chosen) for i, r in enumerate(rows)]
    best = built[chosen]
    export = ExportConfig() if target.runtime == "onnxruntime" and best.quant_cfg is None else None
    return Plan(prune=best.prune_cfg, quantize=best.quant_cfg, export=export, is_feasible=is_feasible, message=message,
                baseline_latency_ms=baseline_ms, candidates=rows)


# --- a GGUF file of a given size: layers (or heads, FFN channels) dropped against bits per weight -------------


def _perplexity(model: nn.Module, ctx: RunContext, max_tokens: int = 1024) -> float:
    """Perplexity of a causal LM on (at most ``max_tokens`` of) the val split, windowed as the report card does."""
    lm = causal_lm_of(model)
    if lm is None:
        raise UnsupportedModuleError(f"a runtime: llama.cpp target plans a GGUF file of a causal LM; got a {type(model).__name__}. "
                                     "Use runtime: onnxruntime for other models.")
    llm = ctx.evaluate.llm if ctx.evaluate is not None else LLMEvalConfig()
    ids = eval_token_ids(lm, ctx.data, "val", min(llm.max_tokens, max_tokens))
    nll, _, _ = scored_logprobs(lm, ids, llm)
    return float(torch.exp(nll.mean()))


def _plan_gguf(model: nn.Module, ctx: RunContext, target: TargetConfig) -> Plan:
    """For each pruning ratio, prune one-shot and write the GGUF file at ``size_mb`` (its size target giving each matrix a
    type); the file read back is scored by val perplexity against the original's (the ratio original / candidate, so
    higher is better, 1 = no loss). Bytes saved by pruning buy bits for the rest: the plan says which trade won."""
    # Candidates, and the chosen export, are judged by perplexity, not refused for top-1 agreement (unless export_args set
    # min_top1_agreement).
    export_cfg = ExportConfig(**{"format": "gguf", "size_mb": target.size_mb, "min_top1_agreement": 0.0, **target.export_args})
    reference = _perplexity(model, ctx)
    rows: list[Candidate] = []
    configs: list[PruneConfig | None] = []
    too_small: list[str] = []
    for sparsity in target.search_sparsities:
        stages, prune_cfg, _ = _candidate_stages(sparsity, "none", target)
        with tempfile.TemporaryDirectory() as tmp:
            work = dataclasses.replace(ctx, work_dir=Path(tmp))
            pruned = run_stages(copy.deepcopy(model), stages, work, reseed=False).model
            try:
                written, record = ExportStage(export_cfg).apply(pruned, work)
            except SizeTargetError as exc:  # the size target is below the cheapest types of this candidate
                too_small.append(f"sparsity {sparsity}: {exc}")
                continue
        metric = reference / _perplexity(written, ctx)
        size = int(record.details["gguf_bytes"])
        rows.append(Candidate(sparsity, "gguf", size, metric, None, size / MB <= float(target.size_mb or 0)))
        configs.append(prune_cfg)
        log.info("plan candidate sparsity=%.2f: GGUF %d bytes, val perplexity ratio %.4f", sparsity, size, metric)
    if not rows:
        raise RecipeError(f"target size_mb={target.size_mb} cannot hold any candidate's GGUF file: {' '.join(too_small)} Raise "
                          "size_mb, or add larger target.sparsities.")
    chosen, is_feasible, _ = _choose(target, rows, 0.0)
    rows = [replace(r, chosen=i == chosen) for i, r in enumerate(rows)]
    best = rows[chosen]
    what = f"{target.search_granularity} sparsity {best.sparsity}" if best.sparsity else "nothing pruned"
    message = (f"budget size_mb≤{target.size_mb:g} MB in llama.cpp: {what}, GGUF types by the size target: {best.size_bytes / MB:.4g} MB, "
               f"val perplexity {1 / best.val_metric_before_recovery:.4f}× the original's (before recovery)."
               + ("" if is_feasible else " No candidate met the budget; this one is the closest.")
               + "".join(f" Not written, {line}" for line in too_small))
    return Plan(prune=configs[chosen], quantize=None, export=export_cfg, is_feasible=is_feasible, message=message,
                baseline_latency_ms=0.0, candidates=rows)

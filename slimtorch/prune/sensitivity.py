"""Per-layer sensitivity scans and automatic per-layer ratios for a global budget.

The scan prunes one layer at a time to each sparsity (weights by the stage's granularity, or whole
output channels for structured granularities) and records the validation metric. The automatic
ratios spend a budget (parameters, MACs, or measured latency) greedily where the scan predicts the
smallest loss per unit saved.
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimtorch.core import RunContext
from slimtorch.io import atomic_write_bytes
from slimtorch.measure.accuracy import accuracy_of, mean_cosine, predict
from slimtorch.measure.latency import quick_latency_ms
from slimtorch.measure.macs import layer_macs, quick_counts
from slimtorch.measure.params import count_nonzero, count_params
from slimtorch.prune.config import PruneConfig, SensitivityConfig
from slimtorch.prune.details import RatioPlan, SensitivityScan, TargetGoal
from slimtorch.prune.importance import Importance, calibrate
from slimtorch.prune.masks import compute_masks, raw_weight, weight_2d, weight_of
from slimtorch.prune.structured import prune_structured_

log = logging.getLogger(__name__)


def _metric(model: nn.Module, batches: list, reference: torch.Tensor | None, task: str) -> float:
    out, labels = predict(model, batches)
    if task == "classification":
        return accuracy_of(out, labels)
    assert reference is not None, "scan passes the unpruned model's outputs for every task but classification"
    return mean_cosine(out, reference)


@torch.no_grad()
def _trial_mask(module: nn.Module, score: torch.Tensor, granularity: str, s: float, structured: bool, vector_size: int) -> torch.Tensor:
    if structured:
        rows = weight_2d(module, score).flatten(1).sum(1)  # (O,)
        keep = torch.ones_like(rows)
        keep[rows.argsort()[: round(s * len(rows))]] = 0
        shape = [-1] + [1] * (score.dim() - 1)
        mask = keep.view(shape).expand_as(weight_2d(module, score))
        return mask.t() if type(module).__name__ == "Conv1D" else mask
    return compute_masks({"x": score}, {"x": module}, granularity, s, "layer", vector_size)["x"]


def scan(model: nn.Module, targets: dict[str, nn.Module], crit: Importance, ctx: RunContext, granularity: str,
         sparsities: list[float], max_batches: int, structured: bool, vector_size: int = 4) -> SensitivityScan:
    """The metric after pruning each target layer alone to each of ``sparsities`` (the others untouched)."""
    batches = list(itertools.islice(ctx.data.loader("val"), max_batches))
    reference = predict(model, batches)[0] if ctx.task != "classification" else None
    baseline = _metric(model, batches, reference, ctx.task)
    layers: dict[str, list[tuple[float, float]]] = {}
    for fqn, module in targets.items():
        score = crit.masked_scores(fqn, module)
        raw = raw_weight(module)
        saved = raw.detach().clone()
        layers[fqn] = []
        for s in sparsities:
            with torch.no_grad():
                raw.mul_(_trial_mask(module, score, granularity, s, structured, vector_size).to(raw.dtype))
            layers[fqn].append((s, round(_metric(model, batches, reference, ctx.task), 5)))
            with torch.no_grad():
                raw.copy_(saved)
    return SensitivityScan(round(baseline, 5), layers)


def plot(result: SensitivityScan, path: Path, metric_name: str) -> None:
    """Metric against sparsity, one line per layer, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for fqn, points in result.layers.items():
        ax.plot([0.0] + [s for s, _ in points], [result.baseline] + [m for _, m in points], marker="o", label=fqn)
    ax.set_xlabel("sparsity of this layer alone")
    ax.set_ylabel(metric_name)
    ax.set_title("pruning sensitivity per layer")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def auto_ratios(result: SensitivityScan, costs: dict[str, float], remove: float) -> dict[str, float]:
    """Greedy per-layer sparsities removing at least ``remove`` cost with the least predicted loss.

    Each move raises one layer to its next scanned sparsity, choosing the smallest
    ``metric drop / cost saved``; ``costs[fqn]`` is the layer's cost at sparsity 0.
    """
    levels = {f: [(0.0, result.baseline), *pts] for f, pts in result.layers.items()}
    at = {f: 0 for f in levels}
    removed = 0.0
    while removed < remove:
        best, best_rate = None, float("inf")
        for f, pts in levels.items():
            if at[f] + 1 >= len(pts) or costs.get(f, 0) <= 0:
                continue
            (s0, m0), (s1, m1) = pts[at[f]], pts[at[f] + 1]
            rate = max(m0 - m1, 0.0) + 1e-6
            rate /= costs[f] * (s1 - s0)
            if rate < best_rate:
                best, best_rate = f, rate
        if best is None:
            break
        s0, s1 = levels[best][at[best]][0], levels[best][at[best] + 1][0]
        removed += costs[best] * (s1 - s0)
        at[best] += 1
    return {f: levels[f][at[f]][0] for f in levels}


def plan_ratios(model: nn.Module, cfg: PruneConfig, ctx: RunContext, targets: dict[str, nn.Module], crit: Importance) -> RatioPlan:
    """Scan (always), plot, and turn ``cfg.target`` into per-layer ratios (``ratios`` is ``None`` without a target)."""
    sens = cfg.sensitivity or SensitivityConfig()
    structured = cfg.kind == "structured"
    calibrate(crit, model, targets, ctx, cfg.calibration_batches)
    result = scan(model, targets, crit, ctx, cfg.granularity, sens.sparsities, sens.max_batches, structured, cfg.vector_size)
    metric_name = "accuracy" if ctx.task == "classification" else "cosine to the unpruned model"
    plot_path = None
    if sens.plot:
        path = ctx.stage_dir("prune") / "sensitivity.png"
        plot(result, path, metric_name)
        plot_path = str(path)
    if cfg.target is None:
        return RatioPlan(result, plot_path)
    example = ctx.data.example_batch(2, split="val")
    kind, value = cfg.target.kind, cfg.target.value
    if kind == "params":
        costs = {f: float(weight_of(m).numel()) for f, m in targets.items()}
        total = float(count_params(model) if structured else count_nonzero(model))
    else:
        costs = {f: v.macs for f, v in layer_macs(model, example).items() if f in targets}
        total = quick_counts(model, example).macs
    fraction, dense_ms = value, None
    if kind == "latency_ms":
        dense_ms = quick_latency_ms(model, ctx.data.example_batch(1, split="val"))
        fraction = min(1.0, value / dense_ms)
    if structured:  # removing a layer's outputs also removes the next layer's inputs: count both halves
        costs = {f: 2 * c for f, c in costs.items()}
    ratios = auto_ratios(result, costs, total * (1 - fraction))
    if structured:
        ratios = _calibrate_structured(model, cfg, ctx, targets, crit, _Budget(result, costs, total, fraction, kind), ratios)
    return RatioPlan(result, plot_path, ratios, dense_ms, TargetGoal(kind, value, fraction))


@dataclass(frozen=True)
class _Budget:
    """What the structured re-planning spends: the scan, per-layer costs, the model's total and the fraction kept."""

    scan: SensitivityScan
    costs: dict[str, float]
    total: float
    fraction: float
    kind: str


def _calibrate_structured(model: nn.Module, cfg: PruneConfig, ctx: RunContext, targets: dict[str, nn.Module], crit: Importance,
                          budget: _Budget, ratios: dict[str, float]) -> dict[str, float]:
    """Re-plan until a trial removal on a copy reaches the budget (dependency coupling changes the cost)."""
    example = ctx.data.example_batch(2, split="val")
    goal = budget.total * (1 - budget.fraction)
    remove = goal
    for _ in range(4):
        trial = copy.deepcopy(model)
        names = dict(trial.named_modules())
        prune_structured_(trial, example, crit.tp_importance(), {f: names[f] for f in targets}, 0.0, ratio_dict=ratios,
                          round_to=cfg.round_to)
        achieved = budget.total - (count_params(trial) if budget.kind == "params" else quick_counts(trial, example).macs)
        if achieved >= goal * 0.98 or achieved <= 0:
            break
        remove *= goal / achieved
        ratios = auto_ratios(budget.scan, budget.costs, remove)
    return ratios

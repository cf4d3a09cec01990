"""What a prune method did, typed: each method returns a :class:`PruneResult`, the stage a :class:`PruneDetails`.

They become dicts only in ``to_json`` (the stage's ``details`` in report.json, key for key as earlier releases
wrote them); :meth:`SensitivityScan.from_json` reads a scan back from a report.json of any release.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch import nn

    from slimtorch.measure.macs import QuickCounts
    from slimtorch.train.loop import FitResult


class MethodDetails(Protocol):
    """The facts one prune method records; the stage adds counts and speed after them."""

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SkippedLayer:
    """A layer a method left alone, and the plain reason why."""

    fqn: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"fqn": self.fqn, "reason": self.reason}


def skipped_reasons(skipped: list[SkippedLayer]) -> str:
    """``"fqn: reason; ..."`` for a note or an error."""
    return "; ".join(f"{s.fqn}: {s.reason}" for s in skipped)


# -- sensitivity scan and automatic ratios ------------------------------------------------------------

def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SensitivityScan:
    """The validation metric after pruning one layer alone: ``layers[fqn] = [(sparsity, metric), ...]``.

    ``baseline`` is the unpruned model's metric (NaN when a hand-edited report.json left it out).
    """

    baseline: float
    layers: dict[str, list[tuple[float, float]]]

    def to_json(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "layers": {f: [[s, m] for s, m in points] for f, points in self.layers.items()}}

    @classmethod
    def from_json(cls, raw: Any) -> SensitivityScan | None:
        """A scan from report.json; ``None`` for anything else. Points that are not two finite numbers are dropped,
        and so are layers left without one (a hand-edited file is read as far as it makes sense)."""
        layers = raw.get("layers") if isinstance(raw, dict) else None
        if not isinstance(layers, dict):
            return None
        parsed = {str(f): [(float(p[0]), float(p[1])) for p in points
                           if isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(x) for x in p)]
                  for f, points in layers.items() if isinstance(points, list)}
        baseline = raw.get("baseline")
        return cls(float(baseline) if _is_number(baseline) else math.nan, {f: pts for f, pts in parsed.items() if pts})


@dataclass(frozen=True)
class TargetGoal:
    """The budget automatic ratios were planned for: ``fraction_kept_goal`` of the params/MACs (or of the dense latency)."""

    kind: str
    value: float
    fraction_kept_goal: float

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "fraction_kept_goal": round(self.fraction_kept_goal, 4)}


@dataclass(frozen=True)
class RatioPlan:
    """The sensitivity scan and, with a target, the per-layer sparsities it chose (``ratios``)."""

    scan: SensitivityScan
    plot_path: str | None = None
    ratios: dict[str, float] | None = None
    latency_ms_dense_b1: float | None = None
    goal: TargetGoal | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sensitivity": self.scan.to_json()}
        if self.plot_path is not None:
            out["sensitivity_plot"] = self.plot_path
        if self.latency_ms_dense_b1 is not None:
            out["latency_ms_dense_b1"] = round(self.latency_ms_dense_b1, 4)
        if self.ratios is not None:
            out["auto_ratios"] = {f: round(r, 4) for f, r in self.ratios.items()}
        if self.goal is not None:
            out["target"] = self.goal.to_json()
        return out


# -- masks and channels over a schedule ---------------------------------------------------------------

@dataclass(frozen=True)
class ScheduleStep:
    """One pruning step: the cumulative sparsity reached, then the recovery training (``None`` without one)."""

    step: int
    sparsity: float
    fit: FitResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "sparsity": round(self.sparsity, 4), "val": None if self.fit is None else self.fit.best_metric,
                **({} if self.fit is None else self.fit.summary())}


@dataclass
class ScheduledDetails:
    """What the mask and structured methods did over their schedule.

    ``channels`` (structured) maps each target layer to its (before, after) output channels;
    ``layer_sparsity`` and ``achieved_sparsity`` (masks) are the fractions of weights masked.
    """

    skipped: list[SkippedLayer]
    schedule: list[ScheduleStep]
    ratio_plan: RatioPlan | None = None
    channels: dict[str, tuple[int, int]] | None = None
    layer_sparsity: dict[str, float] | None = None
    achieved_sparsity: float | None = None

    @property
    def last_fit(self) -> FitResult | None:
        return self.schedule[-1].fit if self.schedule else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"skipped": [s.to_json() for s in self.skipped]}
        if self.ratio_plan is not None:
            out.update(self.ratio_plan.to_json())
        if self.channels is not None:
            out["channels"] = {f: [before, after] for f, (before, after) in self.channels.items()}
        out["schedule"] = [s.to_json() for s in self.schedule]
        if (fit := self.last_fit) is not None:
            out["converged_epoch"] = fit.converged_epoch
        if self.layer_sparsity is not None:
            out["layer_sparsity"] = {f: round(v, 4) for f, v in self.layer_sparsity.items()}
        if self.achieved_sparsity is not None:
            out["achieved_sparsity"] = round(self.achieved_sparsity, 4)
        return out


# -- lottery tickets ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LotteryRound:
    """Test metric of the ticket after round ``iteration`` (0: the dense run) at ``sparsity``."""

    iteration: int
    sparsity: float
    test: float

    def to_json(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "sparsity": round(self.sparsity, 4), "test": self.test}


@dataclass
class LotteryDetails:
    """A lottery-ticket search: every round, and the random re-initialisation control when it ran."""

    skipped: list[SkippedLayer]
    rounds: list[LotteryRound]
    random_reinit_test: float | None = None

    def to_json(self) -> dict[str, Any]:
        lottery: dict[str, Any] = {"rounds": [r.to_json() for r in self.rounds], "dense_test": self.rounds[0].test,
                                   "ticket_test": self.rounds[-1].test}
        if self.random_reinit_test is not None:
            lottery["random_reinit_test"] = self.random_reinit_test
        return {"skipped": [s.to_json() for s in self.skipped], "lottery": lottery}


# -- transformer surgery ------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadsPruned:
    """Heads left in every layer, and which (per layer index) were kept; BERT/GPT-2 need the hf_pruned format."""

    heads_per_layer: int
    kept: dict[int, list[int]]
    needs_hf_pruned_format: bool

    def to_json(self) -> dict[str, Any]:
        return {"heads_per_layer": self.heads_per_layer, "kept": self.kept}


@dataclass(frozen=True)
class FfnPruned:
    """FFN neurons per layer before and after."""

    ffn_before: int
    ffn_per_layer: int

    def to_json(self) -> dict[str, Any]:
        return {"ffn_before": self.ffn_before, "ffn_per_layer": self.ffn_per_layer}


@dataclass(frozen=True)
class LayersDropped:
    """Blocks removed (by index) and how many are left; ``block_influence`` when blocks were ranked by it."""

    dropped_layers: list[int]
    layers_after: int
    block_influence: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.block_influence is None else {"block_influence": [round(v, 5) for v in self.block_influence]}
        return {**out, "dropped_layers": self.dropped_layers, "layers_after": self.layers_after}


@dataclass(frozen=True)
class TransformerDetails:
    """Head, FFN or layer surgery on a Hugging Face model of ``family`` (bert, gpt2, llama)."""

    family: str
    change: HeadsPruned | FfnPruned | LayersDropped
    skipped: list[SkippedLayer] = field(default_factory=lambda: [
        SkippedLayer("embeddings / lm_head", "not pruned by head/ffn/layer granularity")])

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "skipped": [s.to_json() for s in self.skipped], **self.change.to_json()}


# -- what a method returns, and the stage's row -------------------------------------------------------

@dataclass
class PruneResult:
    """What a prune method hands back to the stage: the model (changed in place or a new one) and its record's parts.

    ``status`` is ``None`` for "done"; ``extra_models`` are models worth measuring beside it (the lottery's dense run).
    """

    model: nn.Module
    details: MethodDetails
    notes: list[str] = field(default_factory=list)
    status: str | None = None
    extra_models: list[tuple[str, nn.Module]] = field(default_factory=list)


@dataclass(frozen=True)
class MaskSpeed:
    """Masks run dense: the MAC cut only sparse kernels would deliver."""

    mac_reduction_if_sparse_kernels: float

    def to_json(self) -> dict[str, Any]:
        return {"mac_reduction_if_sparse_kernels": round(self.mac_reduction_if_sparse_kernels, 3)}


@dataclass(frozen=True)
class MeasuredSpeed:
    """Eager-torch batch-1 latency before and after removing structure, against the MAC cut."""

    latency_ms_before_b1: float
    latency_ms_after_b1: float
    mac_reduction: float
    latency_speedup_b1: float
    speedup_efficiency_b1: float | None

    def to_json(self) -> dict[str, Any]:
        return {"latency_ms_before_b1": round(self.latency_ms_before_b1, 4), "latency_ms_after_b1": round(self.latency_ms_after_b1, 4),
                "mac_reduction": round(self.mac_reduction, 3), "latency_speedup_b1": round(self.latency_speedup_b1, 3),
                "speedup_efficiency_b1": None if self.speedup_efficiency_b1 is None else round(self.speedup_efficiency_b1, 3)}


@dataclass(frozen=True)
class TargetReached:
    """How close the stage came to ``prune.target``: the fraction kept (or ms), ``None`` when it was not measured."""

    achieved: float | None


@dataclass(frozen=True)
class PruneDetails:
    """The prune stage's ``details``: the method's facts, the quick counts before and after, speed, and the target."""

    method: MethodDetails
    before: QuickCounts
    after: QuickCounts
    speed: MaskSpeed | MeasuredSpeed
    target: TargetReached | None = None

    def to_json(self) -> dict[str, Any]:
        b, a = self.before, self.after
        out = {**self.method.to_json(), "params_before": b.params, "params_after": a.params,
               "nonzero_params_before": b.nonzero_params, "nonzero_params_after": a.nonzero_params,
               "macs_before": b.macs, "macs_after": a.macs, "nonzero_macs_after": a.nonzero_macs, **self.speed.to_json()}
        if self.target is not None:
            out["target_achieved"] = None if self.target.achieved is None else round(self.target.achieved, 4)
        return out

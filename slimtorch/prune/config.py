"""``prune`` stage configuration: what to remove, how to score it, and on which schedule."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimtorch.stage_tags import StageConfig, StageTags

UNSTRUCTURED = ("weight", "vector", "kernel")
STRUCTURED = ("filter", "channel", "neuron")
TRANSFORMER = ("head", "ffn", "layer")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_nm(granularity: str) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)`` (keep N of every M weights); other granularities -> ``None``."""
    match = _NM.match(granularity)
    return (int(match.group(1)), int(match.group(2))) if match else None


class LayersConfig(BaseModel):
    """Which modules (by fqn, as in ``model.named_modules()``) may be pruned. Prefixes match children."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: list[str] | None = Field(None, description="only these modules (and their children); default all")
    exclude: list[str] = Field(default_factory=list, description="never these modules (and their children)")

    @field_validator("include")
    @classmethod
    def _not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("prune.layers.include is an empty list, so no layer would be pruned; list module names "
                             "(as in model.named_modules()) or leave include out to consider every layer")
        return v


class LotteryConfig(BaseModel):
    """Lottery-ticket search (Frankle & Carbin 2019, https://arxiv.org/abs/1803.03635) with rewinding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iterations: int = Field(3, ge=1, description="prune-rewind-retrain rounds to reach `sparsity`")
    rewind_epoch: int = Field(1, ge=0, description="weights are rewound to this training epoch (0 = init)")
    epochs: int = Field(10, ge=1, description="training epochs per round")
    lr: float = Field(1e-3, gt=0)
    control: bool = Field(True, description="also train the same mask from a random re-initialisation")


class PruneTargetConfig(BaseModel):
    """A global budget for automatic per-layer ratios; set exactly one field.

    ``params``/``macs`` are the fraction of the original kept (0.5 = half); ``latency_ms`` is absolute.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: float | None = Field(None, gt=0, le=1)
    macs: float | None = Field(None, gt=0, le=1)
    latency_ms: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> PruneTargetConfig:
        set_ = [k for k in ("params", "macs", "latency_ms") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"prune.target needs exactly one of params, macs, latency_ms; got {set_ or 'none'}.")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("params", "macs", "latency_ms") if getattr(self, k) is not None)

    @property
    def value(self) -> float:
        return float(getattr(self, self.kind))


class SensitivityConfig(BaseModel):
    """Per-layer scan: prune one layer at a time to each sparsity and measure the validation metric."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sparsities: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9])
    max_batches: int = Field(4, ge=1, description="validation batches per evaluation")
    plot: bool = True

    @field_validator("sparsities")
    @classmethod
    def _in_range(cls, v: list[float]) -> list[float]:
        bad = [s for s in v if not 0 <= s < 1]
        if bad or not v:
            raise ValueError(f"prune.sensitivity.sparsities must be non-empty floats in [0, 1); got {v}.")
        return sorted(v)


class PruneConfig(StageConfig):
    """Recipe entry ``- prune: {sparsity, granularity, criterion, schedule, ...}``.

    ``sparsity`` is the fraction removed: of weights (weight/vector/kernel), of channels per layer
    (filter/channel/neuron), of heads/FFN neurons per layer, or of layers. ``"N:M"`` keeps N of every
    M consecutive weights, so its sparsity is ``1 - N/M`` and the ``sparsity`` field is not used.
    """

    sparsity: float = 0.5
    granularity: str = "weight"
    criterion: Literal["magnitude", "activation", "taylor", "random"] = "magnitude"
    p: Literal[1, 2] = Field(2, description="norm of the magnitude criterion (L1 or L2)")
    schedule: Literal["oneshot", "iterative", "cubic"] = "oneshot"
    steps: int = Field(3, ge=1, description="pruning steps of iterative/cubic schedules")
    finetune_epochs: int | None = Field(None, ge=0, description="training epochs after each pruning step (default: 0 for oneshot, 1 otherwise)")
    recover: Literal["finetune", "distill", "none"] = "finetune"
    lr: float = Field(1e-3, gt=0, description="learning rate of recovery training")
    temperature: float = Field(2.0, gt=0, description="distillation temperature when recover=distill")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the label loss when recover=distill")
    scope: Literal["global", "layer"] = "layer"
    layers: LayersConfig = Field(default_factory=LayersConfig)
    round_to: int | None = Field(None, ge=1, description="keep a multiple of this many channels (structured)")
    vector_size: int = Field(4, ge=1, description="weights per 1-D vector of a Linear layer (granularity vector)")
    calibration_batches: int = Field(4, ge=1, description="batches for activation/taylor scores")
    lottery: LotteryConfig | None = None
    sensitivity: SensitivityConfig | None = None
    target: PruneTargetConfig | None = None
    bake: bool = Field(False, description="fold masks into the weights now (later training may then revive them)")

    @field_validator("sparsity", mode="before")
    @classmethod
    def _sparsity(cls, v: object) -> object:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            hint = "."
            if v == 1 and not isinstance(v, bool):
                hint = "; 1 would remove every weight (0.9 removes nine in ten)."
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1:
                guess = float(v)
                while guess >= 1:
                    guess /= 10
                hint = f"; did you mean {guess:g}?"
            raise ValueError(
                f"prune.sparsity must be a float in [0, 1); got {v}. Sparsity is the fraction of weights removed{hint}"
            )
        return float(v)

    @field_validator("granularity")
    @classmethod
    def _granularity(cls, v: str) -> str:
        v = v.strip().lower()
        if ":" in v:
            nm = parse_nm(v)
            if nm is None:
                raise ValueError(f"prune.granularity {v!r} is not an N:M pattern; write it like '2:4' (keep 2 of every 4 weights).")
            n, m = nm
            if not 0 < n < m:
                raise ValueError(
                    f"prune.granularity {v!r}: N:M keeps N of every M weights, so it needs 0 < N < M; got N={n}, M={m}. Did you mean '{m}:{n}'?"
                    if n > m else f"prune.granularity {v!r}: N:M keeps N of every M weights, so it needs 0 < N < M; got N={n}, M={m}."
                )
            return f"{n}:{m}"
        known = (*UNSTRUCTURED, *STRUCTURED, *TRANSFORMER)
        if v not in known:
            import difflib

            close = difflib.get_close_matches(v, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"prune.granularity {v!r} is unknown.{hint} Use one of {', '.join(known)} or an N:M pattern like '2:4'.")
        return v

    @model_validator(mode="before")
    @classmethod
    def _n_m_sets_the_sparsity(cls, data: Any) -> Any:
        """N:M fixes the sparsity at 1 - N/M: filled in when left out (so dumps reload), refused when it contradicts."""
        if not isinstance(data, dict) or not isinstance(data.get("granularity"), str) or not (nm := parse_nm(data["granularity"].strip())):
            return data
        n, m = nm
        if not 0 < n < m:
            return data  # the granularity validator explains
        given = data.get("sparsity")
        if given is None:
            return {**data, "sparsity": 1 - n / m}
        if isinstance(given, (int, float)) and not isinstance(given, bool) and abs(given - (1 - n / m)) > 1e-9:
            hint = ", or use '2:4' for 0.5" if abs(given - 0.5) < 1e-9 else ""
            raise ValueError(f"prune.sparsity {given:g} conflicts with granularity {data['granularity'].strip()!r}, which keeps {n} of every "
                             f"{m} weights (sparsity {1 - n / m:g}); leave sparsity out{hint}.")
        return data

    @model_validator(mode="after")
    def _combinations(self) -> PruneConfig:
        if self.lottery is not None and self.kind != "mask":
            raise ValueError(f"prune.lottery works on weight masks; granularity {self.granularity!r} is not a mask granularity.")
        if self.target is not None and self.kind not in ("mask", "structured"):
            raise ValueError(f"prune.target (automatic ratios) supports weight/vector/kernel/filter granularities; got {self.granularity!r}.")
        if self.target is not None and self.target.kind == "params" and self.kind == "mask" and parse_nm(self.granularity):
            raise ValueError("prune.target cannot be combined with an N:M granularity, whose sparsity is fixed by N and M.")
        return self

    @property
    def recovery_epochs(self) -> int:
        """Training epochs after each pruning step: ``finetune_epochs``, else 0 for a one-shot schedule and 1 otherwise;
        0 for the transformer granularities (head, ffn, layer), which do not train (recovery is a later distill stage)."""
        if self.kind == "transformer":
            return 0
        if self.finetune_epochs is not None:
            return self.finetune_epochs
        return 0 if self.schedule == "oneshot" else 1

    def stage_tags(self) -> StageTags:
        # Recovery epochs and lottery tickets retrain; Taylor scores take gradients even when nothing trains.
        trains = bool(self.recovery_epochs) or self.lottery is not None
        return StageTags(trains=trains, backward=trains or self.criterion == "taylor")

    @property
    def kind(self) -> Literal["mask", "structured", "transformer"]:
        """How the granularity is realised: masks (incl. N:M), structural removal, or HF surgery."""
        if self.granularity in STRUCTURED:
            return "structured"
        if self.granularity in TRANSFORMER:
            return "transformer"
        return "mask"

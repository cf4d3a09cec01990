"""The recipe: one pydantic model per block, so YAML and Python share one set of checks.

Stage entries are one-key mappings (``- distill: {...}``); the key picks a registered stage and its
``config_cls`` validates the value. That lookup happens in :func:`slimtorch.recipe.load.validate`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimtorch.measure.config import EvaluateConfig
from slimtorch.plan.config import TargetConfig
from slimtorch.train.loop import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    """Where the data comes from and how much of it carries labels."""

    source: str = Field("digits", description="built-in source (digits, mnist1d, text) or 'package.module:function'")
    args: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(64, gt=0)
    labeled_fraction: float = Field(1.0, gt=0, le=1, description="fraction of train labels kept; the rest is an unlabeled transfer set")
    transfer: str | None = Field(None, description="an extra source whose inputs form an unlabeled transfer set")
    num_classes: int | None = Field(None, gt=1)


class AutoStudentSpec(_Strict):
    """Derive the student from the teacher: keep ``width`` of each layer's units and ``depth`` of its layers."""

    width: float = Field(0.25, gt=0, le=1)
    depth: float = Field(1.0, gt=0, le=1)


class ModelSpec(_Strict):
    """A model reference plus its constructor args, and training when it must be trained first."""

    model: str | None = Field(None, description="built-in name, 'module:function', 'hf:<dir>', 'torchvision:<name>' or a saved directory")
    args: dict[str, Any] = Field(default_factory=dict)
    train: TrainConfig | None = None
    auto: AutoStudentSpec | None = None
    name: str | None = Field(None, description="name in the report (default: teacher, teacher_2, ..., student)")

    @model_validator(mode="after")
    def _model_or_auto(self) -> ModelSpec:
        if self.model is None and self.auto is None:
            raise ValueError("give `model: <reference>` (e.g. mlp, hf:minilm, mypkg.models:build) or, for a student, `auto: {width, depth}`")
        if self.model is not None and self.auto is not None:
            raise ValueError("give either `model` or `auto`, not both")
        return self


class ResourceSpec(_Strict):
    """Limits checked before and during the run."""

    max_params: int | None = Field(None, gt=0, description="refuse models with more parameters than this before any work starts")
    max_memory_mb: float | None = Field(None, gt=0, description="refuse models whose fp32 weights exceed this")
    max_stage_seconds: float | None = Field(None, gt=0, description="stop training in a stage after this wall time")


class StageSpec(_Strict):
    """One validated stage: its registered kind and typed config."""

    kind: str
    config: Any


class Recipe(_Strict):
    """A whole compression run. ``stages`` holds validated :class:`StageSpec` objects."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    teacher: ModelSpec | list[ModelSpec]
    student: ModelSpec | None = None
    stages: list[StageSpec] = Field(default_factory=list)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    target: TargetConfig | None = Field(None, description="a budget (latency_ms at batch, size_mb or speedup; min_accuracy): the planner chooses pruning and quantization")

    @field_validator("teacher")
    @classmethod
    def _teachers_not_empty(cls, value: ModelSpec | list[ModelSpec]) -> ModelSpec | list[ModelSpec]:
        if isinstance(value, list) and not value:
            raise ValueError("teacher list is empty; give at least one model")
        return value

    @property
    def teachers(self) -> list[ModelSpec]:
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain YAML-able data, in the same shape as the file (round-trips through load)."""
        out = self.model_dump(mode="json", exclude={"stages"}, exclude_none=True)
        out["stages"] = [{s.kind: s.config.model_dump(mode="json", exclude_none=True)} for s in self.stages]
        return out

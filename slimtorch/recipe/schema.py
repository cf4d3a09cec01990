"""The recipe: one pydantic model per block, so YAML and Python share one set of checks.

Stage entries are one-key mappings (``- distill: {...}``); the key picks a registered stage and its
``config_cls`` validates the value. That lookup happens in :func:`slimtorch.recipe.load.validate`.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from slimtorch.data.registry import DATA_SOURCES, unknown_args_message
from slimtorch.measure.config import EvaluateConfig
from slimtorch.plan.config import TargetConfig
from slimtorch.resources import ResourceSpec, check_device_spec
from slimtorch.stage_tags import StageTags, tags_of
from slimtorch.track.config import TrackingConfig
from slimtorch.train.config import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Names become folder names (runs/<name>, models/<name>): one plain path component, never '.', '..' or hidden.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


NameT = TypeVar("NameT", bound=str | None)


def _check_name(value: NameT, what: str) -> NameT:
    if value is not None and not _SAFE_NAME.match(value):
        raise ValueError(
            f"{what} becomes a folder name, so it must be 1-100 letters, digits, '_', '.' or '-', not starting with "
            f"'.' or '-' (no '/', no '..'); got {value!r}"
        )
    return value


class DataSpec(_Strict):
    """Where the data comes from and how much of it carries labels."""

    source: str = Field("digits", description="built-in source (digits, mnist1d, text) or 'package.module:function'")
    args: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(64, gt=0)
    labeled_fraction: float = Field(1.0, gt=0, le=1, description="fraction of train labels kept; the rest is an unlabeled transfer set")
    transfer: str | None = Field(None, description="an extra source whose inputs form an unlabeled transfer set")
    num_classes: int | None = Field(None, gt=1)

    @field_validator("source", "transfer")
    @classmethod
    def _known_source(cls, v: str | None) -> str | None:
        if v is not None and ":" not in v and v not in DATA_SOURCES:
            raise ValueError(f"{DATA_SOURCES.unknown_message(v).rstrip('.')}, or 'package.module:function' for your own")
        return v

    @field_validator("args")
    @classmethod
    def _known_args(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        source = info.data.get("source")
        if source is not None and ":" not in source:
            problem = unknown_args_message(source, v)
            if problem:
                raise ValueError(problem)
        return v


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

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        return _check_name(value, "a model name")

    @model_validator(mode="after")
    def _model_or_auto(self) -> ModelSpec:
        if self.model is None and self.auto is None:
            raise ValueError("give `model: <reference>` (e.g. mlp, hf:minilm, mypkg.models:build) or, for a student, `auto: {width, depth}`")
        if self.model is not None and self.auto is not None:
            raise ValueError("give either `model` or `auto`, not both")
        return self


# Stage outputs are saved as models/<i>_<stage>[_<extra>]; no other model may take such a name.
STAGE_OUTPUT_NAME = re.compile(r"\d+_.*")


class StageSpec(_Strict):
    """One validated stage: its registered kind and typed config."""

    kind: str
    config: BaseModel

    @property
    def tags(self) -> StageTags:
        """What this stage is (trains, hands on, takes), as its config says."""
        return tags_of(self.config)

    def describe(self) -> str:
        """``kind``, with the settings that decide what it hands on: ``quantize (mode bf16, runtime torch)``."""
        label = self.tags.label
        return f"{self.kind} ({label})" if label else self.kind


class Recipe(_Strict):
    """A whole compression run. ``stages`` holds validated :class:`StageSpec` objects."""

    name: str = Field("run", description="names the default output folder runs/<name>")
    seed: int = Field(0, description="seeds python, numpy and torch; the same seed gives the same numbers")
    data: DataSpec = Field(default_factory=DataSpec)
    teacher: ModelSpec | list[ModelSpec]
    student: ModelSpec | None = None
    stages: list[StageSpec] = Field(default_factory=list)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    device: str = Field("auto", description="where training runs: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="training arithmetic: fp32, or bf16/fp16 autocast (GPUs)")
    processes: int = Field(1, ge=1, le=256, description="train on this many local processes (DDP, launched like torchrun); under torchrun, torchrun decides")
    tracking: TrackingConfig | None = Field(None, description="log the run to mlflow, tensorboard or wandb (local by default)")
    target: TargetConfig | None = Field(None, description="a budget (latency_ms at batch, size_mb or speedup; min_accuracy): the planner chooses pruning and quantization")

    @field_validator("name")
    @classmethod
    def _safe_run_name(cls, value: str) -> str:
        return _check_name(value, "the recipe name")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device_spec(value)

    @field_validator("teacher")
    @classmethod
    def _teachers_not_empty(cls, value: ModelSpec | list[ModelSpec]) -> ModelSpec | list[ModelSpec]:
        if isinstance(value, list) and not value:
            raise ValueError("teacher list is empty; give at least one model")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if not 0 <= v < 2**32:
            raise ValueError(f"seed must be a whole number in [0, 2**32); got {v}. Any value in range works, e.g. 0")
        return v

    @field_validator("stages")
    @classmethod
    def _stage_order(cls, stages: list[StageSpec]) -> list[StageSpec]:
        for i, spec in enumerate(stages):
            tags = spec.tags
            for j, later in enumerate(stages[i + 1:], start=i + 1):
                why = tags.refusal(later.tags)
                if why:
                    fix = tags.instead or f"Put {later.kind} before {spec.kind} (quantize and export go last)"
                    raise ValueError(f"stages[{j}] {later.kind} cannot run after stages[{i}] {spec.describe()}, which {why}. "
                                     f"{fix}; got {spec.kind} then {later.kind}")
        return stages

    @model_validator(mode="after")
    def _target_adds_the_last_stage(self) -> Recipe:
        if self.target is not None:
            last = next((s for s in self.stages if s.tags.deploys), None)
            if last is not None:
                raise ValueError(
                    f"with `target:` the stages are the recovery run after the planned pruning, and the planner adds "
                    f"quantize/export itself; remove the {last.kind} stage (or the target)"
                )
        return self

    @model_validator(mode="after")
    def _unique_model_names(self) -> Recipe:
        # Each name is a folder models/<name>/ and a report row: two models of one name overwrite each other.
        seen: dict[str, str] = {}
        for i, name in enumerate(self.teacher_names()):
            where = f"teacher[{i}]" if isinstance(self.teacher, list) else "teacher"
            if STAGE_OUTPUT_NAME.fullmatch(name):
                raise ValueError(f"{where} is named {name!r}, which is how a stage's output is named (<stage number>_<stage>, "
                                 f"e.g. models/1_distill/): that stage would overwrite it. Pick a name that does not start with "
                                 f"a number and '_', e.g. 'teacher_{name}'")
            if name in seen:
                raise ValueError(f"{where} and {seen[name]} are both named {name!r}: each is saved as models/{name}/ with one "
                                 "report row, so one would replace the other. Give every teacher its own `name:`")
            seen[name] = where
        if self.student is not None and self.student.name in seen:
            raise ValueError(f"the student and {seen[self.student.name]} are both named {self.student.name!r}; give the student "
                             "another `name:`")
        return self

    @property
    def teachers(self) -> list[ModelSpec]:
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]

    def teacher_names(self) -> list[str]:
        """Each teacher's name in the run: its ``name:``, else ``teacher``, ``teacher_2``, ..."""
        return [spec.name or ("teacher" if i == 0 else f"teacher_{i + 1}") for i, spec in enumerate(self.teachers)]

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain YAML-able data, in the same shape as the file (round-trips through load)."""
        out = self.model_dump(mode="json", exclude={"stages"}, exclude_none=True)
        out["stages"] = [{s.kind: s.config.model_dump(mode="json", exclude_none=True)} for s in self.stages]
        return out

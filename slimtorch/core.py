"""Objects every stage shares: the run context, the stage record, the stage registry.

A stage has one public verb, ``apply(model, ctx) -> (model, StageRecord)``. Stages never read YAML,
never print and never call each other; what they share travels in :class:`RunContext`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, get_args, get_origin

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

# Batch helpers live in slimtorch.batch (data code needs them without the run context); re-exported here.
from slimtorch.batch import OUTPUT_KEYS, Batch, batch_len, describe_output, forward, output_tensor  # noqa: F401
from slimtorch.registry import Registry
from slimtorch.stage_tags import StageTags, tags_of

if TYPE_CHECKING:
    from slimtorch.data.bundle import DataBundle
    from slimtorch.measure.config import EvaluateConfig

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a run with the same seed gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Progress(Protocol):
    """What a stage may call to report progress; the CLI passes a rich-backed one."""

    def __call__(self, description: str, total: int) -> Any: ...


@contextmanager
def silent_progress(description: str, total: int) -> Iterator[Callable[..., None]]:
    """The progress reporter used when nobody watches: it ignores every update."""
    yield lambda advance=1, **fields: None


@dataclass
class RunContext:
    """Everything a stage may read besides the model it is given.

    Attributes:
        data: train/val/test (and optional transfer) datasets of the run.
        teacher: the trained reference model (the original), or ``None`` when there is none.
        seed: the recipe's seed; stages call ``seed_everything(ctx.seed + offset)``.
        work_dir: where a stage may keep checkpoints (``work_dir/<stage_dir>``) for ``--resume``.
        task: ``"classification"`` (logits) or ``"embedding"`` (vectors compared by cosine).
        progress: ``progress(description, total)`` is a context manager yielding ``advance(n=1, **fields)``.
        teachers: every teacher of the run, the first being ``teacher`` (several for multi-teacher distillation); empty
            means ``[teacher]``.
        evaluate: how the run measures its models (a quantize stage's ``runtime: auto`` times candidates alike).
        extras: per-run objects a user's own stages hand over.
        device: where training runs (:func:`slimtorch.device.resolve_device`); artifacts are always saved from CPU.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast for training (weights stay fp32; fp16 gets a gradient scaler).
    """

    data: DataBundle
    teacher: nn.Module | None = None
    seed: int = 0
    work_dir: Path = field(default_factory=lambda: Path("runs/tmp"))
    task: str = "classification"
    progress: Callable[[str, int], Any] = silent_progress
    teachers: list[nn.Module] = field(default_factory=list)
    evaluate: EvaluateConfig | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    stage_index: int = 0

    def stage_dir(self, name: str) -> Path:
        """A per-stage directory for checkpoints, created on demand."""
        path = self.work_dir / f"{self.stage_index:02d}_{name}"
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class StageRecord:
    """What one stage did, and its row in the report card: config, cost, notes, and models worth reporting.

    ``extra_models`` are intermediate models (e.g. the teaching assistant) to measure and save
    alongside the stage's output; ``details`` holds stage-specific facts (removed channels, the
    sensitivity scan, the lottery-ticket control) that the report renders as-is. ``model`` names the
    model the stage produced (None for rows that produced none, such as a teacher's training);
    ``extra`` holds a row's other report.json keys (a sweep variant's ``assignment``); ``absent`` the
    standard keys a row was written without (a teacher's training has no ``config``), so a report.json
    reads back and writes again key for key.
    """

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    status: str = "done"
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    extra_models: list[tuple[str, nn.Module]] = field(default_factory=list)
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "config": self.config,
            "seconds": round(self.seconds, 3),
            "status": self.status,
            "notes": list(self.notes),
            "details": self.details,
        }
        if self.model is not None:
            out = {"model": self.model, **out}
        return {**{k: v for k, v in out.items() if k not in self.absent}, **self.extra}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> StageRecord:
        """A report row back from report.json (or from a dict a run wrote); a missing ``seconds``/``status`` is 0.0/done."""
        optional = ("config", "notes", "details")
        return cls(name=str(row.get("name", "")), config=dict(row.get("config") or {}), seconds=float(row.get("seconds", 0.0)),
                   status=str(row.get("status", "done")), notes=list(row.get("notes") or []),
                   details=dict(row.get("details") or {}), model=row.get("model"),
                   extra={k: v for k, v in row.items() if k not in {"name", "model", "seconds", "status", *optional}},
                   absent=frozenset(k for k in optional if k not in row))


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class Stage(Generic[ConfigT]):
    """A compression step: ``apply(model, ctx) -> (model, StageRecord)``, configured by one pydantic model.

    A subclass names its config type and its recipe key once; that registers it in :data:`STAGES` and
    sets ``name`` and ``config_cls`` (the model its recipe entry validates into):

    Example:
        >>> class NoopConfig(BaseModel):
        ...     pass
        >>> class NoopStage(Stage[NoopConfig], kind="noop"):  # doctest: +SKIP
        ...     def apply(self, model, ctx):
        ...         return model, self.record()
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[BaseModel]]

    def __init_subclass__(cls, *, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is None:
            return  # an intermediate base, not a stage a recipe can name
        config_cls = next((get_args(base)[0] for base in cls.__dict__.get("__orig_bases__", ())
                           if get_origin(base) is Stage), None)
        if not isinstance(config_cls, type) or not issubclass(config_cls, BaseModel):
            raise TypeError(f"stage {cls.__name__} must subclass Stage[<its pydantic config class>]; got {config_cls!r}.")
        cls.name, cls.config_cls = kind, config_cls
        STAGES.register(kind)(cls)

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    def tags(self) -> StageTags:
        """What this stage is (trains, hands on, takes): its config's :meth:`~slimtorch.stage_tags.StageConfig.stage_tags`."""
        return tags_of(self.config)

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        """Run the step on ``model`` (changed in place or replaced) and return it with its record."""
        raise NotImplementedError(f"{type(self).__name__} must define apply(model, ctx)")

    def record(self, **fields: Any) -> StageRecord:
        """A record named after this stage holding its config (as the report shows it)."""
        return StageRecord(self.name, self.config.model_dump(mode="json"), **fields)


# The built-in stages: recipe key -> module that defines the stage. The registry imports that module on first
# lookup, so loading a recipe needs no import done beforehand; user stages register by subclassing Stage.
BUILTIN_STAGES = {
    "distill": "slimtorch.distill.stage",
    "export": "slimtorch.export.stage",
    "finetune": "slimtorch.train.stage",
    "lora": "slimtorch.lora.stage",
    "prune": "slimtorch.prune.stage",
    "quantize": "slimtorch.quantize.stage",
}

# name -> Stage class; each class has ``config_cls`` and ``__init__(self, config)``.
STAGES: Registry[type[Stage[Any]]] = Registry("stage", BUILTIN_STAGES)

"""The report card as a typed object: what :func:`slimtorch.compress` and :func:`slimtorch.run.sweep` return,
and what every renderer (report.md, report.html, the plots, the CLI table) takes.

``report.json`` (the versioned contract outside tools read) is its :meth:`Report.to_json`; reading one
back goes through :meth:`Report.from_json`, which validates it first; a run builds one with
:meth:`Report.create`. Those two and :meth:`Report.to_json` are the only places a report is a dict.

Example:
    >>> report = slimtorch.compress("examples/digits.yaml").report  # doctest: +SKIP
    >>> report.final_model.metrics["accuracy"], report.final_model.size_bytes  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from slimtorch.core import StageRecord
from slimtorch.errors import ArtifactError
from slimtorch.measure.machine import probe
from slimtorch.measure.measurement import Measurement, primary_metric
from slimtorch.report.hardware import hardware_warnings as derive_hardware_warnings
from slimtorch.report.schema import REPORT_SCHEMA_VERSION, validate_report
from slimtorch.version import __version__

STANDARD_KEYS = ("schema_version", "slimtorch_version", "created", "recipe", "baseline", "final", "models", "stages",
                 "warnings", "hardware_warnings")


@dataclass
class Report:
    """One run's report card.

    Attributes:
        baseline, final: names of the reference model and of the run's output (both in ``models``).
        models: one :class:`Measurement` per model, in run order.
        stages: one :class:`StageRecord` per step (``name``, ``model``, ``seconds``, ``status``, ``notes``, ``details``).
        warnings, hardware_warnings: run-level warnings, and where hardware does not deliver what counts promise.
        extra: the other top-level sections (``data``, ``training``, ``plan``, ``sweep``).
    """

    recipe: dict[str, Any]
    baseline: str
    final: str
    models: list[Measurement]
    stages: list[StageRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hardware_warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = 1
    slimtorch_version: str = "?"
    created: str = ""

    @classmethod
    def create(
        cls,
        *,
        recipe: dict[str, Any],
        baseline: str,
        final: str,
        models: Sequence[Measurement],
        stages: Sequence[StageRecord | Mapping[str, Any]] = (),
        warnings: Sequence[str] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> Report:
        """A new run's report card (see docs/REPORT.md for every field); hardware warnings are derived here, once.

        Args:
            recipe: the recipe as a dict (rendered back as YAML in the HTML card).
            baseline, final: names of the reference model and of the run's output; both must be in ``models``.
            models: one :class:`Measurement` per model, in run order.
            stages: one :class:`StageRecord` (or the row dict a run step wrote) per stage.
            warnings: run-level warnings.
            extra: more top-level sections (e.g. ``data``); they cannot replace the standard ones.

        Raises:
            ArtifactError: ``baseline`` or ``final`` names no model in ``models``, or ``extra`` names a standard field.
        """
        names = [m.name for m in models]
        for role, name in (("baseline", baseline), ("final", final)):
            if name not in names:
                raise ArtifactError(f"report {role} {name!r} is not among the measured models {names}; pass one of those names.")
        # the CPU (instruction sets) and GPU every figure was measured on; a re-rendered report keeps its own
        sections = {"machine": probe().to_json(), **(extra or {})}
        for key in sections:
            if key in STANDARD_KEYS:
                raise ArtifactError(f"extra report key {key!r} would replace a standard field; rename it.")
        return cls(
            recipe=recipe, baseline=baseline, final=final, models=list(models),
            stages=[s if isinstance(s, StageRecord) else StageRecord.from_json(dict(s)) for s in stages],
            warnings=list(warnings), hardware_warnings=derive_hardware_warnings(models, baseline), extra=sections,
            schema_version=REPORT_SCHEMA_VERSION, slimtorch_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "report") -> Report:
        """Validate a report.json object and type it.

        Raises:
            ArtifactError: it is not a report card this version can read.
        """
        validate_report(data, where)
        models = [Measurement.from_json(m) for m in data["models"]]
        hardware = data.get("hardware_warnings")
        return cls(
            recipe=data["recipe"], baseline=data["baseline"], final=data["final"],
            models=models, stages=[StageRecord.from_json(row) for row in data["stages"]], warnings=list(data.get("warnings", [])),
            # reports written before hardware warnings were stored get them derived from their figures
            hardware_warnings=list(hardware) if hardware is not None else derive_hardware_warnings(models, data["baseline"]),
            extra={k: v for k, v in data.items() if k not in STANDARD_KEYS},
            schema_version=data["schema_version"], slimtorch_version=str(data.get("slimtorch_version", "?")),
            created=str(data.get("created", "")),
        )

    def to_json(self) -> dict[str, Any]:
        """The report.json object (every field name of the published contract)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version, "slimtorch_version": self.slimtorch_version, "created": self.created,
            "recipe": copy.deepcopy(self.recipe), "baseline": self.baseline, "final": self.final,
            "models": [m.to_json() for m in self.models], "stages": [copy.deepcopy(s.to_json()) for s in self.stages],
            "warnings": list(self.warnings), "hardware_warnings": list(self.hardware_warnings),
        }
        out.update(copy.deepcopy(self.extra))
        return out

    def model(self, name: str) -> Measurement:
        """The measurement of the model called ``name``."""
        for m in self.models:
            if m.name == name:
                return m
        raise ArtifactError(f"the report has no model {name!r}; it has {[m.name for m in self.models]}.")

    @property
    def baseline_model(self) -> Measurement:
        return self.model(self.baseline)

    @property
    def final_model(self) -> Measurement:
        return self.model(self.final)

    @property
    def headline(self) -> tuple[str, float | None, float | None]:
        """``(metric name, baseline value, final value)`` of the one headline metric (:func:`primary_metric`)."""
        name, base = primary_metric(self.baseline_model.metrics)
        return name, base, primary_metric(self.final_model.metrics)[1]

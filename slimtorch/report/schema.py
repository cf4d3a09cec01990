"""report.json: building it, reading it back, and checking it is one we can render."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slimtorch.errors import ArtifactError
from slimtorch.measure.machine import probe
from slimtorch.measure.measurement import Measurement
from slimtorch.report.hardware import hardware_warnings
from slimtorch.version import __version__

REPORT_SCHEMA_VERSION = 1
STAGE_DEFAULTS = {"seconds": 0.0, "status": "done"}


def build_report(
    *,
    recipe: dict[str, Any],
    baseline: str,
    final: str,
    models: list[Measurement],
    stages: list[dict[str, Any]],
    warnings: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report card as a JSON-ready dict (see docs/REPORT.md for every field).

    Args:
        recipe: the recipe as a dict (rendered back as YAML in the HTML card).
        baseline, final: names of the reference model and of the run's output; both must be in ``models``.
        models: one :class:`Measurement` (or its ``to_json()`` dict) per model, in run order.
        stages: one row per stage: ``name``, ``seconds``, ``status`` and optionally ``model``, ``config``,
            ``notes``, ``details`` (``details["sensitivity"]`` is plotted).
        warnings: run-level warnings; hardware warnings are derived and stored under ``hardware_warnings``.
        extra: more top-level keys (e.g. ``data``); they cannot replace the keys above.

    Raises:
        ArtifactError: ``baseline`` or ``final`` names no model in ``models``.
    """
    typed = [m if isinstance(m, Measurement) else Measurement.from_json(m) for m in models]
    entries = [m.to_json() for m in typed]
    names = [m["name"] for m in entries]
    for role, name in (("baseline", baseline), ("final", final)):
        if name not in names:
            raise ArtifactError(f"report {role} {name!r} is not among the measured models {names}; pass one of those names.")
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "slimtorch_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe,
        "baseline": baseline,
        "final": final,
        "models": entries,
        "stages": [{**STAGE_DEFAULTS, **row} for row in stages],
        "warnings": list(warnings or []),
    }
    # the CPU (instruction sets) and GPU every figure was measured on; a re-rendered report keeps its own
    for key, value in {"machine": probe().to_json(), **(extra or {})}.items():
        if key in report:
            raise ArtifactError(f"extra report key {key!r} would replace a standard field; rename it.")
        report[key] = value
    report["hardware_warnings"] = hardware_warnings(typed, baseline)
    return report


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate a report.json (a file, or a run directory holding one).

    Raises:
        ArtifactError: the file is missing, not valid JSON, from an incompatible schema, or lacks fields.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise ArtifactError(f"no report at {path}; run `slimtorch compress RECIPE --out DIR` to create one.")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupted (not valid JSON: {exc}); re-run the recipe with --resume to rewrite it.") from exc
    validate_report(report, str(path))
    return report


def validate_report(report: Any, where: str = "report") -> None:
    """Raise :class:`ArtifactError` unless ``report`` is a report card this version can render."""
    if not isinstance(report, dict):
        raise ArtifactError(f"{where} must hold a JSON object; got {type(report).__name__}.")
    version = report.get("schema_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{where} has no integer schema_version; it is not a slimtorch report (or is corrupted).")
    if version > REPORT_SCHEMA_VERSION:
        raise ArtifactError(
            f"{where} has schema_version {version}, newer than this slimtorch supports ({REPORT_SCHEMA_VERSION}); "
            "upgrade slimtorch (pip install -U slimtorch) to read it."
        )
    missing = [k for k in ("recipe", "baseline", "final", "models", "stages") if k not in report]
    if missing:
        raise ArtifactError(f"{where} lacks {', '.join(missing)}; it is corrupted. Re-run the recipe with --resume to rewrite it.")
    if not isinstance(report["models"], list) or not report["models"]:
        raise ArtifactError(f"{where} has no measured models; re-run the recipe with --resume to rewrite it.")
    for m in report["models"]:
        _check_model_entry(m, where)
    if not isinstance(report["recipe"], dict) or not isinstance(report["stages"], list):
        raise ArtifactError(f"{where}: 'recipe' must be an object and 'stages' a list; the report is corrupted.")
    if not all(isinstance(s, dict) for s in report["stages"]) or not all(isinstance(w, str) for w in report.get("warnings", [])):
        raise ArtifactError(f"{where}: each stage must be an object and each warning a string; the report is corrupted.")
    names = [Measurement.from_json(m).name for m in report["models"]]
    for role in ("baseline", "final"):
        if report[role] not in names:
            raise ArtifactError(f"{where}: {role} {report[role]!r} is not among its models {names}; the report is corrupted.")


_NUMBER = (int, float)
# What each model entry field must hold for the renderers (None allowed where a figure can be missing).
_MODEL_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), False), "stage": ((str,), False), "runtime": ((str,), False),
    "params": ((int,), False), "nonzero_params": ((int,), False), "threads": ((int,), False),
    "size_bytes": ((int,), True), "compressed_bytes": ((int,), True), "macs": ((int,), True),
    "latency_ms": ((dict,), False), "metrics": ((dict,), False), "agreement": (_NUMBER, True),
}


def _check_model_entry(m: Any, where: str) -> None:
    Measurement.from_json(m)  # an object with every required key
    name = m.get("name", "?")
    for key, (types, nullable) in _MODEL_FIELDS.items():
        value = m.get(key)
        if (value is None and nullable) or key not in m and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            raise ArtifactError(f"{where}: model {name!r} field {key!r} must be {'/'.join(t.__name__ for t in types)}"
                                f"{' or null' if nullable else ''}; got {type(value).__name__}. The report is corrupted.")
    for batch, stats in m["latency_ms"].items():
        if not isinstance(stats, dict) or not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in stats.values()):
            raise ArtifactError(f"{where}: model {name!r} latency_ms[{batch!r}] must map statistics to numbers. The report is corrupted.")
    for metric, value in m["metrics"].items():
        if metric != "per_class_accuracy" and value is not None and not isinstance(value, _NUMBER):
            raise ArtifactError(f"{where}: model {name!r} metric {metric!r} must be a number; got {type(value).__name__}. The report is corrupted.")

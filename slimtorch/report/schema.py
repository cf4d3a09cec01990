"""report.json: reading it back and checking it is one we can render (:meth:`Report.create` builds one)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from slimtorch.errors import ArtifactError
from slimtorch.io import read_json
from slimtorch.measure.measurement import Measurement

REPORT_SCHEMA_VERSION = 1
# A report is a page: these bounds refuse a hostile or runaway report.json before it is rendered.
MAX_REPORT_BYTES = 64_000_000
MAX_REPORT_MODELS = 1000


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
    report = read_json(path, MAX_REPORT_BYTES, ArtifactError, "re-run the recipe with --resume to rewrite it")
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
    if len(report["models"]) > MAX_REPORT_MODELS:
        raise ArtifactError(f"{where} holds {len(report['models']):,} models; a report renders at most {MAX_REPORT_MODELS:,}. "
                            "Split the comparison into several runs or sweeps.")
    for m in report["models"]:
        _check_model_entry(m, where)
    if not isinstance(report["recipe"], dict) or not isinstance(report["stages"], list):
        raise ArtifactError(f"{where}: 'recipe' must be an object and 'stages' a list; the report is corrupted.")
    for key in ("warnings", "hardware_warnings"):
        if not _is_list_of(report.get(key, []), str):
            raise ArtifactError(f"{where}: {key!r} must be a list of strings; the report is corrupted.")
    for row in report["stages"]:
        _check_stage_row(row, where)
    if "machine" in report and not isinstance(report["machine"], dict):
        raise ArtifactError(f"{where}: 'machine' must be an object; got {type(report['machine']).__name__}. The report is corrupted.")
    names = [m["name"] for m in report["models"]]
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
    Measurement.check_entry(m)  # an object with every required key
    name = m.get("name", "?")
    for key, (types, nullable) in _MODEL_FIELDS.items():
        value = m.get(key)
        if (value is None and nullable) or key not in m and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            raise ArtifactError(f"{where}: model {name!r} field {key!r} must be {'/'.join(t.__name__ for t in types)}"
                                f"{' or null' if nullable else ''}; got {type(value).__name__}. The report is corrupted.")
    def bad(what: str, value: Any) -> ArtifactError:
        shown = repr(value) if isinstance(value, (int, float, str)) else type(value).__name__
        return ArtifactError(f"{where}: model {name!r} {what}; got {shown[:80]}. The report is corrupted: re-run the recipe with --resume.")

    for key in ("params", "nonzero_params", "size_bytes", "compressed_bytes", "macs", "threads"):
        if isinstance(m.get(key), int) and m[key] < 0:
            raise bad(f"field {key!r} must be a count >= 0", m[key])
    if not _finite_or_none(m.get("agreement")):
        raise bad("agreement must be a finite number or null", m.get("agreement"))
    for batch, stats in m["latency_ms"].items():
        if not (isinstance(batch, str) and batch.isdigit() and int(batch) > 0):
            raise bad("latency_ms keys must be batch sizes such as '1'", batch)
        if not isinstance(stats, dict) or not all(_finite(v) and v >= 0 for v in stats.values()):
            raise bad(f"latency_ms[{batch!r}] must map statistics to numbers (finite, >= 0)", stats)
        if not {"p50", "p90"} <= stats.keys():
            raise bad(f"latency_ms[{batch!r}] must hold p50 and p90", stats)
    for metric, value in m["metrics"].items():
        if metric == "per_class_accuracy":
            if not (isinstance(value, dict) and all(_finite_or_none(v) for v in value.values())):
                raise bad("metric 'per_class_accuracy' must map classes to finite numbers", value)
        elif not _finite_or_none(value):
            raise bad(f"metric {metric!r} must be a finite number or null", value)
    if not _is_list_of(m.get("notes", []), str):
        raise bad("notes must be a list of strings", m.get("notes"))
    for key in ("robustness", "decode_tokens_per_s", "llm", "cost_s"):
        if not isinstance(m.get(key, {}), dict):
            raise bad(f"field {key!r} must be an object", m.get(key))
    if not all(_finite_or_none(v) for v in m.get("robustness", {}).values()):
        raise bad("robustness must map noise levels to finite numbers", m["robustness"])
    decode = m.get("decode_tokens_per_s", {})
    if decode:  # a causal LM: its row shows perplexity and tokens/s per batch
        if not all(isinstance(b, str) and b.isdigit() and _finite(v) for b, v in decode.items()):
            raise bad("decode_tokens_per_s must map batch sizes to finite numbers", decode)
        if not _finite(m["metrics"].get("perplexity")):
            raise bad("has decode speeds, so metric 'perplexity' must be a finite number", m["metrics"].get("perplexity"))
        for key in ("setup", "prefill_ms", "samples", "compile_s", "decode_eager_tokens_per_s"):
            if not isinstance(m["llm"].get(key, {}), dict):
                raise bad(f"llm.{key} must be an object", m["llm"].get(key))


def _check_stage_row(row: Any, where: str) -> None:
    if not isinstance(row, dict):
        raise ArtifactError(f"{where}: each stage must be an object; got {type(row).__name__}. The report is corrupted.")
    name = row.get("name", "?")
    problems = [
        ("name", isinstance(row.get("name", ""), str), "a string"),
        ("model", isinstance(row.get("model", ""), str), "a string"),
        ("status", isinstance(row.get("status", ""), str), "a string"),
        ("seconds", _finite(row.get("seconds", 0.0)) and row.get("seconds", 0.0) >= 0, "a finite number of seconds >= 0"),
        ("notes", _is_list_of(row.get("notes", []), str), "a list of strings"),
        ("details", isinstance(row.get("details", {}), dict), "an object"),
        ("config", isinstance(row.get("config", {}), dict), "an object"),
    ]
    for key, ok, expected in problems:
        if not ok:
            got = row.get(key)
            shown = repr(got)[:80] if isinstance(got, (int, float, str)) else type(got).__name__
            raise ArtifactError(f"{where}: stage {name!r} field {key!r} must be {expected}; got {shown}. The report is corrupted.")


def _finite(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value)


def _finite_or_none(value: Any) -> bool:
    return value is None or _finite(value)


def _is_list_of(value: Any, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) for v in value)

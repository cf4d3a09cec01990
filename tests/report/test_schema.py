"""report.json: schema, round-trip, and clear errors on broken files."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimtorch.errors import ArtifactError
from slimtorch.measure import Measurement
from slimtorch.measure.measurement import LatencyStats
from slimtorch.report import REPORT_SCHEMA_VERSION, load_report, write_report
from slimtorch.report.card import Report
from slimtorch.version import __version__

MODEL_KEYS = {"name", "stage", "params", "nonzero_params", "size_bytes", "compressed_bytes", "macs", "runtime",
              "threads", "latency_ms", "metrics", "agreement", "robustness", "notes", "seconds"}


def test_report_has_the_contract_fields(report):
    assert report["schema_version"] == REPORT_SCHEMA_VERSION
    assert report["slimtorch_version"] == __version__
    assert (report["baseline"], report["final"]) == ("teacher", "3_quantize")
    assert report["data"] == {"source": "digits"}
    assert report["warnings"] == ["a run-level warning"]
    for m in report["models"]:
        assert MODEL_KEYS <= set(m)
        assert set(m["latency_ms"]["1"]) >= {"p50", "p90"}
    for s in report["stages"]:
        assert {"name", "seconds", "status"} <= set(s)


def test_write_then_load_round_trips(report, tmp_path):
    write_report(tmp_path, Report.from_json(report))
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "pareto.png", "report.html"}
    loaded = load_report(tmp_path / "report.json")
    assert loaded == json.loads(json.dumps(report))
    assert load_report(tmp_path) == loaded  # a run directory works too
    again = [Measurement.from_json(m) for m in loaded["models"]]
    assert [m.name for m in again] == ["teacher", "1_distill", "2_prune", "3_quantize"]


def test_corrupted_json_raises(tmp_path):
    (tmp_path / "report.json").write_text('{"schema_version": 1, "models": [', encoding="utf-8")
    with pytest.raises(ArtifactError, match="is corrupted \\(not valid JSON"):
        load_report(tmp_path / "report.json")


def test_newer_schema_raises(report, tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({**report, "schema_version": REPORT_SCHEMA_VERSION + 1}))
    with pytest.raises(ArtifactError, match="newer than this slimtorch supports.*upgrade slimtorch"):
        load_report(tmp_path / "report.json")


def test_missing_schema_version_raises(tmp_path):
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(ArtifactError, match="no integer schema_version"):
        load_report(tmp_path / "report.json")


def test_missing_fields_raise(report, tmp_path):
    broken = {k: v for k, v in report.items() if k != "stages"}
    (tmp_path / "report.json").write_text(json.dumps(broken))
    with pytest.raises(ArtifactError, match="lacks stages; it is corrupted"):
        load_report(tmp_path / "report.json")


def test_empty_models_raise(report, tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({**report, "models": []}))
    with pytest.raises(ArtifactError, match="has no measured models"):
        load_report(tmp_path / "report.json")


def test_missing_file_raises(tmp_path):
    with pytest.raises(ArtifactError, match="no report at .*slimtorch compress"):
        load_report(tmp_path / "report.json")


def test_not_an_object_raises(tmp_path):
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="must hold a JSON object"):
        load_report(tmp_path)


def test_unknown_baseline_raises(models, stages):
    with pytest.raises(ArtifactError, match="baseline 'nope' is not among the measured models"):
        Report.create(recipe={}, baseline="nope", final="teacher", models=models, stages=stages)


def test_final_in_file_must_be_a_model(report, tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({**report, "final": "ghost"}))
    with pytest.raises(ArtifactError, match="final 'ghost' is not among its models"):
        load_report(tmp_path)


def test_extra_cannot_replace_standard_fields(models, stages):
    with pytest.raises(ArtifactError, match="would replace a standard field"):
        Report.create(recipe={}, baseline="teacher", final="teacher", models=models, stages=stages, extra={"models": []})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(accs=st.lists(st.floats(0, 1), min_size=1, max_size=5), sizes=st.lists(st.integers(1, 10**9), min_size=5, max_size=5))
def test_any_measurements_round_trip_through_json(accs, sizes, tmp_path_factory, make_measurement):
    make = make_measurement
    models = [make(f"m{i}", "s", 10, 10, sizes[i], 10, 1.0, 2.0, a) for i, a in enumerate(accs)]
    report = Report.create(recipe={"name": "h"}, baseline="m0", final=models[-1].name, models=models).to_json()
    out = tmp_path_factory.mktemp("r")
    (out / "report.json").write_text(json.dumps(report))
    assert load_report(out)["models"] == [m.to_json() for m in models]


def test_typed_report_round_trips_report_json_and_reads_like_it(tmp_path):
    """The typed card is report.json at the disk boundary: same fields, same values, dict-style reads still work."""
    import json

    models = [Measurement(name="teacher", stage="teacher", params=100, nonzero_params=100, size_bytes=400, compressed_bytes=380,
                          macs=100, runtime="torch", threads=1, latency_ms={"1": LatencyStats(p50=1.0, p90=1.2)},
                          metrics={"accuracy": 0.9}, agreement=1.0, robustness={}),
              Measurement(name="small", stage="prune", params=50, nonzero_params=25, size_bytes=200, compressed_bytes=100,
                          macs=50, runtime="torch", threads=1, latency_ms={"1": LatencyStats(p50=0.5, p90=0.6)},
                          metrics={"accuracy": 0.88}, agreement=0.97, robustness={})]
    card = Report.create(recipe={"name": "r"}, baseline="teacher", final="small", models=models, stages=[{"name": "prune"}],
                        extra={"data": {"source": "digits"}})
    write_report(tmp_path, card)
    card = Report.from_json(json.loads((tmp_path / "report.json").read_text()))
    assert card.to_json() == json.loads((tmp_path / "report.json").read_text())
    assert card.final_model.nonzero_params == 25 and card.baseline_model.name == "teacher"
    assert card.headline == ("accuracy", 0.9, 0.88)
    assert card.extra["data"] == {"source": "digits"} and card.models[1].name == "small"

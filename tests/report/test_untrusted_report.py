"""`slimtorch report` re-renders a report.json it did not necessarily write: every field it renders is checked first.

Each case edits one field of a valid report the way a careless or hostile hand could; ``slimtorch report`` must
answer with one ``error:`` line, exit 2, and leave the run directory exactly as it was (nothing half-written).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from slimtorch.cli import app
from slimtorch.errors import ArtifactError
from slimtorch.report import Report, load_report, render_markdown


def _model(r, i=0):
    return r["models"][i]


CASES = {
    "latency-key-not-a-batch": (lambda r: _model(r)["latency_ms"].update({"abc": {"p50": 1.0}}), r"latency_ms keys must be batch sizes"),
    "latency-nan": (lambda r: _model(r)["latency_ms"]["1"].update({"p50": float("nan")}), r"latency_ms\['1'\] must map statistics to numbers \(finite"),
    "latency-without-p90": (lambda r: _model(r)["latency_ms"]["1"].pop("p90"), r"latency_ms\['1'\] must hold p50 and p90"),
    "latency-infinite": (lambda r: _model(r)["latency_ms"]["1"].update({"p90": float("inf")}), r"numbers \(finite, >= 0\)"),
    "accuracy-nan": (lambda r: _model(r)["metrics"].update({"accuracy": float("nan")}), r"metric 'accuracy' must be a finite number"),
    "negative-size": (lambda r: _model(r).update({"size_bytes": -5}), r"'size_bytes' must be a count >= 0; got -5"),
    "llm-not-an-object": (lambda r: _model(r).update({"llm": [1]}), r"field 'llm' must be an object"),
    "decode-without-perplexity": (lambda r: _model(r).update({"decode_tokens_per_s": {"1": 5.0}}), r"'perplexity' must be a finite"),
    "stage-seconds-text": (lambda r: r["stages"][0].update({"seconds": "x"}), r"stage 'distill' field 'seconds' must be a finite number"),
    "stage-name-number": (lambda r: r["stages"][0].update({"name": 5}), r"field 'name' must be a string"),
    "stage-notes-text": (lambda r: r["stages"][1].update({"notes": "abc"}), r"field 'notes' must be a list of strings"),
    "stage-details-text": (lambda r: r["stages"][1].update({"details": "x"}), r"field 'details' must be an object"),
    "per-class-accuracy-text": (lambda r: _model(r)["metrics"].update({"per_class_accuracy": {"0": "x"}}), r"per_class_accuracy"),
    "robustness-text": (lambda r: _model(r).update({"robustness": {"noise_0.1": "x"}}), r"robustness must map noise levels"),
    "model-notes-number": (lambda r: _model(r).update({"notes": 5}), r"notes must be a list of strings; got 5"),
    "warnings-text": (lambda r: r.update({"warnings": "abc"}), r"'warnings' must be a list of strings"),
    "machine-text": (lambda r: r.update({"machine": "x"}), r"'machine' must be an object"),
    "too-many-models": (lambda r: r.update({"models": [dict(_model(r), name=f"m{i}") for i in range(1001)] + r["models"]}),
                        r"holds 1,005 models; a report renders at most 1,000"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_report_field_is_one_line_and_nothing_is_written(tmp_path, report, case):
    edit, match = CASES[case]
    edit(report)
    (tmp_path / "report.json").write_text(json.dumps(report))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ArtifactError, match=match):
        load_report(tmp_path)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_deeply_nested_or_huge_report_json_is_one_line(tmp_path, report, monkeypatch):
    text = json.dumps(report)
    (tmp_path / "report.json").write_text(text[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ArtifactError, match=r"JSON nested too deeply to read"):
        load_report(tmp_path)
    monkeypatch.setattr("slimtorch.report.schema.MAX_REPORT_BYTES", 1000)
    (tmp_path / "report.json").write_text(text)
    with pytest.raises(ArtifactError, match=r"report\.json is [\d,]+ bytes, over the 1,000 this file can hold"):
        load_report(tmp_path)


def test_markdown_shows_raw_html_in_names_and_notes_as_text(report):
    report["models"][0]["name"] = report["baseline"] = "<script>alert(1)</script>"
    report["models"][0]["notes"] = ["<img src=x onerror=alert(1)>"]
    md = render_markdown(Report.from_json(report))
    assert "<script" not in md and "<img" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md

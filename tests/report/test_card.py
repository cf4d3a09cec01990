"""The typed Report at the disk boundary: a report.json written by release 0.1.0 still reads and renders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from slimtorch.cli import app
from slimtorch.report import load_report, render_markdown
from slimtorch.report.card import Report

# report.json and report.md exactly as release 0.1.0 wrote them (`compress` on a digits MLP: teacher → prune → int8);
# its models have no `device` or `peak_memory_bytes`, its timings no p10.
RELEASE = Path(__file__).parent / "data"


def _section(md: str, heading: str) -> str:
    return md.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def test_a_release_0_1_0_report_types_with_its_figures():
    old = json.loads((RELEASE / "report_0.1.0.json").read_text())
    card = Report.from_json(old)
    assert [m.name for m in card.models] == ["teacher", "1_prune", "2_quantize"] and card.final == "2_quantize"
    assert card.final_model.size_bytes == old["models"][2]["size_bytes"] and card.final_model.device == "cpu"
    assert card.headline == ("accuracy", old["models"][0]["metrics"]["accuracy"], old["models"][2]["metrics"]["accuracy"])
    assert card.hardware_warnings == old["hardware_warnings"] and card.extra["data"] == old["data"]


def test_slimtorch_report_renders_a_release_0_1_0_report_json(tmp_path):
    shutil.copy(RELEASE / "report_0.1.0.json", tmp_path / "report.json")
    old = json.loads((tmp_path / "report.json").read_text())
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "pareto.png", "report.html"}
    md, then = (tmp_path / "report.md").read_text(), (RELEASE / "report_0.1.0.md").read_text()
    # the same models table, to the character, as the release printed from the same figures
    assert _section(md, "Models") == _section(then, "Models")
    assert _section(md, "Stages") == _section(then, "Stages") and _section(md, "Warnings") == _section(then, "Warnings")
    assert "2_quantize" in result.output and "6.38 kB" in result.output  # the CLI table: same size, same unit
    # report.json keeps every field and value it had (models gain only the fields added since)
    again = load_report(tmp_path)
    assert {k: v for k, v in again.items() if k != "models"} == {k: v for k, v in old.items() if k != "models"}
    for before, after in zip(old["models"], again["models"]):
        assert {k: after[k] for k in before} == before


def test_an_old_report_without_stored_hardware_warnings_gets_them_derived():
    old = json.loads((RELEASE / "report_0.1.0.json").read_text())
    expected = old.pop("hardware_warnings")
    card = Report.from_json(old)
    assert card.hardware_warnings == expected and expected  # the unstructured-sparsity-stored-dense warning
    assert expected[0] in render_markdown(card)

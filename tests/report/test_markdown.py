"""report.md: one row per model with ratios against the baseline."""

from __future__ import annotations

from slimtorch.report import render_markdown
from slimtorch.report.card import Report


def _model_rows(md: str) -> list[str]:
    section = md.split("## Models", 1)[1].split("##", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")][2:]  # minus header and alignment


def test_one_row_per_model_with_ratios(report):
    md = render_markdown(Report.from_json(report))
    rows = _model_rows(md)
    assert len(rows) == len(report["models"]) == 4
    assert rows[0].startswith("| teacher (baseline)")
    distill = rows[1]
    assert "10k (10×)" in distill  # params
    assert "40 kB (10×)" in distill  # size
    assert "0.8 (1.25×)" in distill  # batch-1 latency speedup
    assert "1.25 (8×)" in distill  # batch-64 speedup
    assert "-1.00" in distill  # accuracy Δ points
    assert "96.0%" in distill  # agreement
    assert rows[3].startswith("| 3_quantize (final)") and "(40×)" in rows[3]


def test_sections_stages_and_warnings(report):
    md = render_markdown(Report.from_json(report))
    for heading in ("## Models", "## Latency", "## Stages", "## Warnings"):
        assert heading in md
    assert "| prune | 2_prune | done | 1.5 | masks kept |" in md
    assert "- a run-level warning" in md
    assert "1_distill: MACs fell 10.0×" in md


def test_markdown_renders_without_optional_fields(report):
    for m in report["models"]:
        m.update(size_bytes=None, compressed_bytes=None, macs=None, agreement=None, robustness={})
    report.pop("hardware_warnings")
    rows = _model_rows(render_markdown(Report.from_json(report)))
    assert len(rows) == 4 and all("—" in r for r in rows)

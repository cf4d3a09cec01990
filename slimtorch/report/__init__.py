"""The report card: report.json (versioned), report.md, pareto.png and a self-contained report.html.

Renderers take the typed :class:`Report`; dicts exist only as report.json (``Report.create`` builds a card,
``Report.to_json`` writes one, ``load_report`` reads and validates one, ``Report.from_json`` types it).

>>> card = Report.create(recipe=recipe, baseline="teacher", final="3_quantize", models=measurements, stages=records)  # doctest: +SKIP
>>> write_report(Path("runs/digits"), card)                                                                           # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from slimtorch.io import atomic_write_json, atomic_write_text
from slimtorch.report.card import Report
from slimtorch.report.hardware import hardware_warnings
from slimtorch.report.html import render_html
from slimtorch.report.markdown import render_markdown
from slimtorch.report.plots import pareto_front, plot_pareto
from slimtorch.report.schema import REPORT_SCHEMA_VERSION, load_report, validate_report


def write_report(out_dir: str | Path, report: Report) -> None:
    """Write report.json (:meth:`Report.to_json`), report.md, pareto.png and report.html into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    data = report.to_json()
    validate_report(data)
    # Render everything before writing anything: a report that fails to render leaves the old files as they were.
    markdown, page = render_markdown(report), render_html(report)
    atomic_write_json(out_dir / "report.json", data)
    atomic_write_text(out_dir / "report.md", markdown)
    plot_pareto(report, out_dir / "pareto.png")
    atomic_write_text(out_dir / "report.html", page)


__all__ = [
    "REPORT_SCHEMA_VERSION",
    "Report",
    "hardware_warnings",
    "load_report",
    "pareto_front",
    "plot_pareto",
    "render_html",
    "render_markdown",
    "validate_report",
    "write_report",
]

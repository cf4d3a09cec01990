"""The report card's energy section: measured joules per inference, or the honest reason there are none.

Measured figures and an estimate (only when the recipe asked for one) sit in separate tables, the estimate's
headed by its method, so one is never read as the other.
"""

from __future__ import annotations

from slimtorch.measure.measurement import Measurement
from slimtorch.report.card import Report


def _fmt_j(joules: float) -> str:
    if joules >= 1:
        return f"{joules:.3g} J"
    if joules >= 1e-3:
        return f"{joules * 1e3:.3g} mJ"
    return f"{joules * 1e6:.3g} µJ"


def _rows(models: list[Measurement], kind: str, batches: list[str]) -> list[str]:
    lines = ["| model | " + " | ".join(f"per call b{b} | per example b{b}" for b in batches) + " |",
             "|---|" + "---:|---:|" * len(batches)]
    for m in models:
        figures = m.energy.get(kind) or {}
        cells = []
        for b in batches:
            call, example = figures.get("joules_per_call", {}).get(b), figures.get("joules_per_example", {}).get(b)
            cells += ["-" if call is None else _fmt_j(call), "-" if example is None else _fmt_j(example)]
        lines.append(f"| {m.name} | " + " | ".join(cells) + " |")
    return lines


def energy_lines(report: Report) -> list[str]:
    """``## Energy`` for report.md: a table per kind of figure, then the counter's caveats; nothing when energy was off."""
    models = [m for m in report.models if m.energy]
    if not models:
        return []
    batches = sorted({b for m in models for kind in ("measured", "estimated")
                      for b in (m.energy.get(kind) or {}).get("joules_per_call", {})}, key=int)
    lines = ["", "## Energy"]
    measured = [m for m in models if m.energy.get("measured")]
    if measured:
        lines += ["", f"Measured by {measured[0].energy['counter']} in the interleaved latency rounds:", ""]
        lines += _rows(measured, "measured", batches)
    estimated = [m for m in models if m.energy.get("estimated")]
    if estimated:
        lines += ["", f"**Estimated, not measured**: {estimated[0].energy['estimated']['method']}.", ""]
        lines += _rows(estimated, "estimated", batches)
    notes = list(dict.fromkeys(n for m in models for n in m.energy.get("notes", [])))
    if not measured and not estimated:
        lines += ["", f"No energy figures: {'; '.join(notes)}." if notes else "No energy figures."]
    else:
        lines += [""] + [f"- {n}" for n in notes]
    return lines

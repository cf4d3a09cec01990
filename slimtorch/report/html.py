"""report.html: one self-contained page (inline CSS, plots as base64 PNG) a browser opens offline."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from html import escape

import yaml

from slimtorch.report.card import Report
from slimtorch.report.markdown import (
    LATENCY_HEADER,
    STAGE_HEADER,
    all_warnings,
    latency_rows,
    machine_summary,
    stage_rows,
    summary_header,
    summary_rows,
)
from slimtorch.report.plots import pareto_png, per_class_png, quant_sensitivity_png, robustness_png, sensitivity_png
from slimtorch.report.sensitivity import sensitivity_curves
from slimtorch.report.table import Cell, by_name, compare, fmt_bytes, fmt_delta, fmt_metric, fmt_ratio

CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1280px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:18px;margin:34px 0 10px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
.sub{color:#5b6475;font-size:14px}
.cards{display:flex;gap:14px;flex-wrap:wrap;margin:18px 0}
.card{flex:1;background:#fff;border:1px solid #e1e5eb;border-radius:10px;padding:12px 18px;min-width:150px;box-shadow:0 1px 2px #0000000d}
.card .v{font-size:24px;font-weight:650}.card .k{font-size:12px;color:#5b6475;text-transform:uppercase;letter-spacing:.04em}
.good{color:#1a7f37}.bad{color:#c62828}
.scroll{overflow-x:auto;background:#fff;border:1px solid #e1e5eb;border-radius:8px}
table{border-collapse:collapse;font-size:12.5px;width:100%}
th,td{padding:5px 7px;border-bottom:1px solid #eef0f3;text-align:right;white-space:nowrap;vertical-align:top}
th{white-space:normal}td small{color:#5b6475}
th{background:#f0f2f5;font-weight:600;position:sticky;top:0}th:first-child,td:first-child{text-align:left}
td.wrap{white-space:normal;text-align:left;min-width:260px}
tr.baseline td{background:#f4f7ff}tr.final td{background:#f2fbf4;font-weight:600}
img{max-width:100%;background:#fff;border:1px solid #e1e5eb;border-radius:8px;padding:6px;box-sizing:border-box}
.warn{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px;margin:6px 0;border-radius:4px;font-size:14px}
pre{background:#1e2430;color:#e8ecf2;padding:14px;border-radius:8px;overflow-x:auto;font-size:12.5px}
details{margin:6px 0}summary{cursor:pointer;color:#2a5bd7}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}@media(max-width:900px){.grid2{grid-template-columns:1fr}}
footer{margin-top:40px;color:#8a93a3;font-size:12px}
"""


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _cell(cell: Cell | str, stack: bool) -> str:
    """A cell; with ``stack`` its bracketed note goes on its own line so wide tables fit 1280 px."""
    if isinstance(cell, str):
        return escape(cell)
    if stack and cell.note is not None:
        return f"{escape(cell.text)}<br><small>({escape(cell.note)})</small>"
    return escape(cell.plain())


def _table(header: list[str], rows: Sequence[Sequence[Cell | str]], classes: list[str] | None = None, wrap_last: bool = False,
           stack: bool = False) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(f'<td{" class=wrap" if wrap_last and j == len(row) - 1 else ""}>{_cell(c, stack and j > 0)}</td>' for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _cards(report: Report) -> str:
    rows = {r.model.name: r for r in compare(report.models, report.baseline, report.final)}
    final, base = rows[report.final], by_name(report.models)[report.baseline]
    speed = next((s for s in final.speedup.values() if s is not None), None)
    delta = final.delta_points
    cards = [
        ("final model", escape(report.final), ""),
        ("size", fmt_ratio(final.size_x) + " smaller" if final.size_x else fmt_bytes(final.model.size_bytes), ""),
        ("speedup (smallest batch)", fmt_ratio(speed), "good" if speed and speed > 1 else "bad" if speed else ""),
        (f"{final.metric_name}", fmt_metric(final.metric_name, final.metric), ""),
        ("Δ vs baseline (pts)", fmt_delta(delta), "good" if delta is not None and delta >= -1 else "bad" if delta is not None else ""),
        ("baseline", escape(base.name), ""),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{escape(k)}</div><div class="v {c}">{v}</div></div>' for k, v, c in cards) + "</div>"


def render_html(report: Report) -> str:
    """The report card as one HTML page: summary, Pareto, latency, per-class, robustness, sensitivity, stages, recipe."""
    recipe = report.recipe
    title = f"slimtorch report{': ' + str(recipe.get('name')) if recipe.get('name') else ''}"
    classes = ["baseline" if r.is_baseline else "final" if r.is_final else ""
               for r in compare(report.models, report.baseline, report.final)]
    parts = [
        (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body><main>"),
        (f"<h1>{escape(title)}</h1><div class=sub>baseline <b>{escape(report.baseline)}</b> · final "
        f"<b>{escape(report.final)}</b> · slimtorch {escape(report.slimtorch_version)} · "
        f"{escape(report.created)}"
        + (f" · measured on {escape(summary)}" if (summary := machine_summary(report)) else "")
        + "</div>"),
        _cards(report),
    ]
    warnings = all_warnings(report)
    if warnings:
        parts.append("<h2>Warnings</h2>" + "".join(f'<div class="warn">{escape(w)}</div>' for w in warnings))
    parts += [
        "<h2 id=models>Models</h2>", _table(summary_header(report), summary_rows(report), classes, stack=True),
        ("<p class=sub>Brackets: params, size and MACs are <i>times fewer</i> than the baseline; latency is the "
        "<i>speedup</i> (baseline p50 ÷ model p50); (≈) = inside the baseline's p10–p90 timing spread, no measurable difference. "
        "Δ pts = metric change in percentage points. MACs per example.</p>"),
        "<h2 id=pareto>Pareto</h2>", _img(pareto_png(report), "Pareto plot of size and latency against quality"),
        "<h2 id=latency>Latency</h2>", _table(LATENCY_HEADER, latency_rows(report)),
    ]
    per_class = _img(per_class_png(report), "per-class accuracy")
    if per_class:
        parts += ["<h2 id=per-class>Per-class accuracy</h2>", per_class]
    charts = [_img(robustness_png(report), "robustness to input noise")]
    charts += [_img(sensitivity_png(stage, curves), f"sensitivity scan of {stage}") for stage, curves in sensitivity_curves(report)]
    charts += [_img(quant_sensitivity_png(s.name, s.details["quant_sensitivity"]), "int8 sensitivity")
               for s in report.stages if isinstance(s.details.get("quant_sensitivity"), dict)]
    if any(charts):
        parts.append("<h2 id=robustness>Robustness and sensitivity</h2><div class=grid2>"
                     + "".join(f"<div>{c}</div>" for c in charts if c) + "</div>")
    if report.stages:
        parts += ["<h2 id=stages>Stages</h2>", _table(STAGE_HEADER, stage_rows(report), wrap_last=True), _stage_details(report)]
    notes = [(m.name, n) for m in report.models for n in m.notes]
    if notes:
        parts.append("<h2>Measurement notes</h2><ul>" + "".join(f"<li><b>{escape(w)}</b>: {escape(n)}</li>" for w, n in notes) + "</ul>")
    parts.append("<h2 id=recipe>Recipe</h2><pre>" + escape(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)) + "</pre>")
    parts.append("<footer>Every number above was measured on this machine; see docs/REPORT.md for how.</footer></main></body></html>")
    return "\n".join(parts)


def _stage_details(report: Report) -> str:
    out = []
    for s in report.stages:
        if s.details or s.config:
            # a row written without a config (a teacher's training) shows null, as report.json has none
            body = json.dumps({"config": None if "config" in s.absent else s.config, "details": None if "details" in s.absent else s.details}, indent=2, default=str)
            out.append(f"<details><summary>{escape(s.name)}: config and details</summary><pre>{escape(body)}</pre></details>")
    return "".join(out)

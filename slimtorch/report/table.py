"""The numbers behind every table: each model against the baseline, and how to print them."""

from __future__ import annotations

import math
from typing import Any

from slimtorch.measure.measurement import primary_metric
from slimtorch.units import fmt_bytes, fmt_count  # noqa: F401  (re-exported: renderers take every formatter from here)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in report["models"]}


def batches(report: dict[str, Any]) -> list[str]:
    """Every timed batch size in the report, smallest first."""
    return sorted({b for m in report["models"] for b in m.get("latency_ms", {})}, key=int)


def metric_of(m: dict[str, Any]) -> tuple[str, float | None]:
    """``("accuracy", v)`` for classifiers, ``("cosine", v)`` for encoders (:func:`primary_metric`)."""
    return primary_metric(m.get("metrics"))


def p50(m: dict[str, Any], batch: str) -> float | None:
    t = (m.get("latency_ms") or {}).get(batch)
    return None if not t else t.get("p50")


def within_spread(base: dict[str, Any], m: dict[str, Any], batch: str) -> bool:
    """True when two timings overlap: each p50 lies inside the other's p10–p90 range (no measurable difference).

    Timings without a p10 (reports written before side-by-side timing) never count as overlapping.
    """
    a, b = (base.get("latency_ms") or {}).get(batch), (m.get("latency_ms") or {}).get(batch)
    if not a or not b or "p10" not in a or "p10" not in b:
        return False
    return a["p10"] <= b["p50"] <= a["p90"] and b["p10"] <= a["p50"] <= b["p90"]


def ratio(base: float | None, value: float | None) -> float | None:
    """``base / value``: "times fewer" for counts and bytes, speedup for latency."""
    if base is None or value is None or value <= 0:
        return None
    return base / value


def compare(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model with its figures and its ratios against the baseline."""
    base = by_name(report)[report["baseline"]]
    _, base_metric = metric_of(base)
    rows = []
    for m in report["models"]:
        metric_name, metric = metric_of(m)
        rows.append({
            "model": m,
            "is_baseline": m["name"] == report["baseline"],
            "is_final": m["name"] == report["final"],
            "params_x": ratio(base["params"], m["params"]),
            "nonzero_x": ratio(base["nonzero_params"], m["nonzero_params"]),
            "size_x": ratio(base.get("size_bytes"), m.get("size_bytes")),
            "compressed_x": ratio(base.get("compressed_bytes"), m.get("compressed_bytes")),
            "macs_x": ratio(base.get("macs"), m.get("macs")),
            # a difference inside the timing spread is not a speedup: shown as "≈" (see within_spread)
            "speedup": {b: None if within_spread(base, m, b) and m is not base else ratio(p50(base, b), p50(m, b))
                        for b in batches(report)},
            "same_speed": {b: m is not base and within_spread(base, m, b) for b in batches(report)},
            "metric_name": metric_name,
            "metric": metric,
            "delta_points": None if metric is None or base_metric is None else (metric - base_metric) * 100,
        })
    return rows


def fmt_ratio(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.3g}×" if x < 100 else f"{x:.0f}×"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def fmt_pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def fmt_metric(name: str, x: float | None) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.2f}%" if name == "accuracy" else f"{x:.4f}"


def fmt_delta(x: float | None) -> str:
    return "—" if x is None else f"{x:+.2f}"


def with_ratio(text: str, x: float | None, is_baseline: bool) -> str:
    return text if is_baseline or x is None else f"{text} ({fmt_ratio(x)})"

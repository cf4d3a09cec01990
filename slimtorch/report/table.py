"""The numbers behind every table: each :class:`Measurement` against the baseline, and how to print them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from slimtorch.measure.measurement import Measurement
from slimtorch.units import fmt_bytes, fmt_count  # noqa: F401  (re-exported: renderers take every formatter from here)


def by_name(models: Sequence[Measurement]) -> dict[str, Measurement]:
    return {m.name: m for m in models}


def batches(models: Sequence[Measurement]) -> list[str]:
    """Every timed batch size among ``models``, smallest first."""
    return sorted({b for m in models for b in m.latency_ms}, key=int)


def metric_of(m: Measurement) -> tuple[str, float | None]:
    """``("accuracy", v)`` for classifiers, ``("cosine", v)`` for encoders (:func:`primary_metric`)."""
    return m.primary_metric


def p50(m: Measurement, batch: str) -> float | None:
    t = m.latency_ms.get(batch)
    return None if t is None else t.p50


def within_spread(base: Measurement, m: Measurement, batch: str) -> bool:
    """True when two timings overlap: each p50 lies inside the other's p10–p90 range (no measurable difference).

    Timings without a p10 (reports written before side-by-side timing) never count as overlapping.
    """
    a, b = base.latency_ms.get(batch), m.latency_ms.get(batch)
    if a is None or b is None or a.p10 is None or b.p10 is None:
        return False
    return a.p10 <= b.p50 <= a.p90 and b.p10 <= a.p50 <= b.p90


def ratio(base: float | None, value: float | None) -> float | None:
    """``base / value``: "times fewer" for counts and bytes, speedup for latency."""
    if base is None or value is None or value <= 0:
        return None
    return base / value


@dataclass(frozen=True)
class Comparison:
    """One model's figures against the baseline: ``*_x`` are "times fewer" ratios, ``speedup`` per batch size.

    A latency inside the baseline's spread has ``speedup`` None and ``same_speed`` True (shown as "≈").
    """

    model: Measurement
    is_baseline: bool
    is_final: bool
    params_x: float | None
    nonzero_x: float | None
    size_x: float | None
    compressed_x: float | None
    macs_x: float | None
    speedup: dict[str, float | None]
    same_speed: dict[str, bool]
    metric_name: str
    metric: float | None
    delta_points: float | None


def compare(models: Sequence[Measurement], baseline: str, final: str) -> list[Comparison]:
    """One :class:`Comparison` per model (in order) against the model called ``baseline``."""
    base = by_name(models)[baseline]
    _, base_metric = metric_of(base)
    sizes = batches(models)
    rows = []
    for m in models:
        metric_name, metric = metric_of(m)
        rows.append(Comparison(
            model=m,
            is_baseline=m.name == baseline,
            is_final=m.name == final,
            params_x=ratio(base.params, m.params),
            nonzero_x=ratio(base.nonzero_params, m.nonzero_params),
            size_x=ratio(base.size_bytes, m.size_bytes),
            compressed_x=ratio(base.compressed_bytes, m.compressed_bytes),
            macs_x=ratio(base.macs, m.macs),
            # a difference inside the timing spread is not a speedup: shown as "≈" (see within_spread)
            speedup={b: None if within_spread(base, m, b) and m is not base else ratio(p50(base, b), p50(m, b)) for b in sizes},
            same_speed={b: m is not base and within_spread(base, m, b) for b in sizes},
            metric_name=metric_name,
            metric=metric,
            delta_points=None if metric is None or base_metric is None else (metric - base_metric) * 100,
        ))
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


@dataclass(frozen=True)
class Cell:
    """One table cell as both renderers draw it: a figure and, in brackets after it, its ratio or share.

    Markdown writes ``text (note)`` on one line; HTML puts the note on its own line so wide tables fit.
    """

    text: str
    note: str | None = None

    def plain(self) -> str:
        return self.text if self.note is None else f"{self.text} ({self.note})"


def with_ratio(text: str, x: float | None, is_baseline: bool) -> Cell:
    return Cell(text) if is_baseline or x is None else Cell(text, fmt_ratio(x))

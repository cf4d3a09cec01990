"""Read the sensitivity scans the prune stage records in ``details["sensitivity"]``.

Its one shape (:func:`slimtorch.prune.sensitivity.scan`): ``{"baseline": m, "layers": {layer: [[sparsity, metric], ...]}}``,
the metric after pruning that layer alone to each sparsity. Anything else (a hand-edited report.json) is not plotted.
"""

from __future__ import annotations

import math
from typing import Any

from slimtorch.report.card import Report

Curves = dict[str, list[tuple[float, float]]]


def sensitivity_curves(report: Report) -> list[tuple[str, Curves]]:
    """``[(stage name, {layer: [(sparsity, metric), ...]})]`` for every stage that ran a scan."""
    out = []
    for stage in report.stages:
        curves = parse_curves(stage.details.get("sensitivity"))
        if curves:
            out.append((stage.name, curves))
    return out


def parse_curves(raw: Any) -> Curves:
    """``{layer: [(sparsity, metric), ...]}`` from one recorded scan; points that are not two numbers are skipped."""
    layers = raw.get("layers") if isinstance(raw, dict) else None
    if not isinstance(layers, dict):
        return {}
    curves = {str(layer): sorted((float(p[0]), float(p[1])) for p in points if _pair(p))
              for layer, points in layers.items() if isinstance(points, list)}
    return {k: v for k, v in curves.items() if v}


def _pair(p: Any) -> bool:
    return (isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in p))

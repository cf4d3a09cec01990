"""Read the sensitivity scans the prune stage records in ``details["sensitivity"]``.

Their shape is :class:`slimtorch.prune.details.SensitivityScan` (``{"baseline": m, "layers": {layer: [[sparsity, metric], ...]}}``
in report.json), read back through its ``from_json``: the metric after pruning that layer alone to each sparsity.
Anything else (a hand-edited report.json) is not plotted.
"""

from __future__ import annotations

from typing import Any

from slimtorch.prune.details import SensitivityScan
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
    """``{layer: [(sparsity, metric), ...]}`` (sorted by sparsity) from one recorded scan; points that are not two
    numbers are skipped."""
    scan = SensitivityScan.from_json(raw)
    return {} if scan is None else {layer: sorted(points) for layer, points in scan.layers.items()}

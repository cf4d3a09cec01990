"""Read the sensitivity scans stages record in ``details["sensitivity"]``, whatever reasonable shape they use.

Accepted shapes (metric after pruning one layer alone to each sparsity):

- ``{layer: {sparsity: metric}}`` or ``{layer: [[sparsity, metric], ...]}``;
- ``{layer: [{"sparsity": s, "metric"|"accuracy"|"value": v}, ...]}``;
- ``[{"layer": name, "sparsity": s, "metric"|"accuracy"|"value": v}, ...]``;
- ``{"sparsities": [s, ...], "layers"|"curves"|"metrics": {layer: [v, ...]}}``;
- ``{"baseline": m, "layers": <any of the first three>}`` (what the prune stage records).
"""

from __future__ import annotations

from typing import Any, SupportsFloat, TypeGuard

from slimtorch.report.card import Report

Curves = dict[str, list[tuple[float, float]]]
_VALUE_KEYS = ("metric", "accuracy", "value", "score", "cosine")
_LAYER_KEYS = ("layer", "name", "module", "fqn")


def sensitivity_curves(report: Report) -> list[tuple[str, Curves]]:
    """``[(stage name, {layer: [(sparsity, metric), ...]})]`` for every stage that ran a scan."""
    out = []
    for stage in report.stages:
        raw = (stage.get("details") or {}).get("sensitivity")
        curves = parse_curves(raw) if raw is not None else {}
        if curves:
            out.append((stage.get("name", "stage"), curves))
    return out


def parse_curves(raw: Any) -> Curves:
    """Normalise one scan to ``{layer: [(sparsity, metric), ...]}``; unreadable parts are skipped."""
    curves: Curves = {}
    if isinstance(raw, dict) and "sparsities" in raw:
        table: dict[Any, Any] = next((raw[k] for k in ("layers", "curves", "metrics") if isinstance(raw.get(k), dict)), {})
        for layer, values in table.items():
            curves[str(layer)] = [(float(s), float(v)) for s, v in zip(raw["sparsities"], values) if _num(v)]
    elif isinstance(raw, dict) and isinstance(raw.get("layers"), (dict, list)):
        return parse_curves(raw["layers"])
    elif isinstance(raw, dict):
        for layer, points in raw.items():
            parsed = _points(points)
            if parsed:
                curves[str(layer)] = parsed
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict):
                layer = next((item[k] for k in _LAYER_KEYS if k in item), None)
                value = next((item[k] for k in _VALUE_KEYS if k in item), None)
                if layer is not None and _num(item.get("sparsity")) and _num(value):
                    curves.setdefault(str(layer), []).append((float(item["sparsity"]), float(value)))
    return {k: sorted(v) for k, v in curves.items() if v}


def _points(points: Any) -> list[tuple[float, float]]:
    if isinstance(points, dict):
        return [(float(s), float(v)) for s, v in points.items() if _num(s) and _num(v)]
    if not isinstance(points, list):
        return []
    out = []
    for p in points:
        if isinstance(p, (list, tuple)) and len(p) == 2 and _num(p[0]) and _num(p[1]):
            out.append((float(p[0]), float(p[1])))
        elif isinstance(p, dict):
            value = next((p[k] for k in _VALUE_KEYS if k in p), None)
            if _num(p.get("sparsity")) and _num(value):
                out.append((float(p["sparsity"]), float(value)))
    return out


def _num(x: Any) -> TypeGuard[SupportsFloat | str]:
    """Whether ``float(x)`` reads ``x`` (a bool is not a number here)."""
    if isinstance(x, bool):
        return False
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return True

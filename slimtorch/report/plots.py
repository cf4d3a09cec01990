"""Report-card figures (matplotlib, Agg, no pyplot state): Pareto, per-class, robustness, sensitivity."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimtorch.io import atomic_write_bytes
from slimtorch.optional import available, import_optional
from slimtorch.report.card import Report
from slimtorch.report.table import batches, fmt_bytes, metric_of, p50

COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD"]
FRONTIER = "#C44E52"

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure (the ``plots`` extra); callers first check :func:`plots_available`."""
    return import_optional("matplotlib.figure", feature="report plots").Figure(**kwargs)


def plots_available() -> bool:
    """Whether matplotlib is installed: without it the report card skips its figures (tables stay)."""
    return available("matplotlib")


def _png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points no other point beats on both axes (lower x, higher y), sorted by x."""
    front: list[tuple[float, float, str]] = []
    for x, y, name in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y, name))
    return front


def _metric_label(report: Report) -> str:
    return metric_of(report.models[0])[0]


def _panel(ax: Any, report: Report, xs: dict[str, float | None], xlabel: str, fmt: Any) -> None:
    metric = _metric_label(report)
    scale = 100.0 if metric == "accuracy" else 1.0
    points = [(x, value * scale, m.name) for m in report.models
              if (x := xs.get(m.name)) and (value := metric_of(m)[1]) is not None]
    if not points:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="#888")
        ax.set_xlabel(xlabel)
        return
    front = pareto_front(points)
    on_front = {name for _, _, name in front}
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=FRONTIER, lw=1.5, alpha=0.6,
                ls="--", label="Pareto frontier", zorder=1)
    for i, (x, y, name) in enumerate(points):
        is_base, is_final = name == report.baseline, name == report.final
        marker = "*" if is_base else "D" if is_final else "o"
        size = 220 if is_base else 90
        color = COLORS[i % len(COLORS)]
        ax.scatter([x], [y], s=size, marker=marker, color=color if name in on_front else "white",
                   edgecolors=color, linewidths=2, zorder=3, label=name)
    ax.set_xscale("log")
    lo_x, hi_x = min(p[0] for p in points) / 1.6, max(p[0] for p in points) * 2.2
    decades = math.log10(hi_x / lo_x)
    # 1-2-5 ticks crowd each other past two decades (labels like "50 kB100 kB200 kB"): then decades only
    ticker = import_optional("matplotlib.ticker", feature="report plots")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0, 3.0) if decades <= 3 else (1.0,)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(fmt))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (%)" if metric == "accuracy" else metric)
    ax.grid(True, which="major", alpha=0.3)
    lo, hi = min(p[1] for p in points), max(p[1] for p in points)
    pad = max((hi - lo) * 0.15, 0.5 if metric == "accuracy" else 0.005)
    ax.set_ylim(lo - pad, hi + pad)
    xlo, xhi = min(p[0] for p in points), max(p[0] for p in points)
    ax.set_xlim(xlo / 1.6, xhi * 2.2)
    _label(ax, points)


# label offsets (points) tried in order; the first clear of labels already placed wins
_OFFSETS = [(7, 6), (7, -13), (-7, 6), (-7, -13), (7, 17), (7, -24)]


def _label(ax: Any, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point with its name, nudging labels away from each other."""
    placed: list[tuple[float, float]] = []
    for x, y, name in sorted(points, key=lambda p: -p[1]):
        px, py = ax.transData.transform((x, y)) * 72 / ax.figure.dpi
        def clearance(o: tuple[int, int], px: float = px, py: float = py) -> float:
            return min((max(abs(px + o[0] - qx) / 4, abs(py + o[1] - qy)) for qx, qy in placed), default=1e9)

        best = next((o for o in _OFFSETS if clearance(o) >= 11), max(_OFFSETS, key=clearance))
        placed.append((px + best[0], py + best[1]))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=best, fontsize=8, color="#333",
                    ha="left" if best[0] > 0 else "right")


def pareto_png(report: Report) -> bytes | None:
    """Two panels: size on disk and smallest-batch p50 latency (log x) against the metric; frontier dashed."""
    if not plots_available():  # the `plots` extra; the card's tables carry the same figures
        return None
    fig = _figure(figsize=(11, 4.4))
    ax_size, ax_lat = fig.subplots(1, 2)
    b = (batches(report.models) or ["1"])[0]
    sizes: dict[str, float | None] = {m.name: m.size_bytes for m in report.models}
    _panel(ax_size, report, sizes, "size on disk", lambda v, _: fmt_bytes(int(v)))
    _panel(ax_lat, report, {m.name: p50(m, b) for m in report.models}, f"latency p50, batch {b} (ms)",
           lambda v, _: f"{v:g}")
    ax_size.set_title("Size vs quality (up-left is better)", fontsize=10)
    ax_lat.set_title("Latency vs quality (up-left is better)", fontsize=10)
    handles, labels = ax_lat.get_legend_handles_labels() or ax_size.get_legend_handles_labels()
    if not handles:
        handles, labels = ax_size.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.08))
    fig.suptitle("★ baseline   ◆ final   filled = on the frontier", fontsize=9, color="#555", y=0.995)
    fig.tight_layout()
    return _png(fig)


def plot_pareto(report: Report, path: str | Path) -> None:
    """Write :func:`pareto_png` to ``path`` atomically (nothing without matplotlib, the ``plots`` extra)."""
    png = pareto_png(report)
    if png is not None:
        atomic_write_bytes(Path(path), png)


def per_class_png(report: Report) -> bytes | None:
    """Heatmap of per-class accuracy (models × classes), or None when no model has it."""
    if not plots_available():  # the `plots` extra; the card's tables carry the same figures
        return None
    models = [m for m in report.models if m.metrics.get("per_class_accuracy")]
    if not models:
        return None
    classes = sorted({c for m in models for c in m.metrics["per_class_accuracy"]}, key=_class_key)
    grid = [[m.metrics["per_class_accuracy"].get(c, float("nan")) * 100 for c in classes] for m in models]
    fig = _figure(figsize=(max(6.0, 0.62 * len(classes) + 2.5), 0.5 * len(models) + 1.4))
    ax = fig.subplots()
    flat = [v for row in grid for v in row if not math.isnan(v)]
    image = ax.imshow(grid, cmap="RdYlGn", vmin=max(0.0, min(flat) - 5) if flat else 0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(models)), [m.name for m in models])
    ax.set_xlabel("class")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8, color="#111")
    fig.colorbar(image, ax=ax, label="accuracy (%)", fraction=0.04)
    ax.set_title("Per-class accuracy", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def robustness_png(report: Report) -> bytes | None:
    """The metric against the input-noise level (0 = clean) for each model, or None when not measured."""
    if not plots_available():  # the `plots` extra; the card's tables carry the same figures
        return None
    models = [m for m in report.models if m.robustness]
    if not models:
        return None
    fig = _figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    metric = _metric_label(report)
    scale = 100.0 if metric == "accuracy" else 1.0
    for i, m in enumerate(models):
        levels = sorted((float(k.rsplit("_", 1)[1]), v) for k, v in m.robustness.items())
        clean = metric_of(m)[1]
        if clean is not None and all(lv != 0 for lv, _ in levels):
            levels.insert(0, (0.0, clean))
        ax.plot([lv for lv, _ in levels], [v * scale for _, v in levels], marker="o", color=COLORS[i % len(COLORS)],
                label=m.name, lw=2 if m.name == report.final else 1.3)
    ax.set_xlabel("Gaussian input noise (std, × input std)")
    ax.set_ylabel(f"{metric} (%)" if metric == "accuracy" else metric)
    ax.set_title("Robustness to input noise", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return _png(fig)


def sensitivity_png(stage: str, curves: dict[str, list[tuple[float, float]]]) -> bytes | None:
    """One line per layer: the metric after pruning only that layer to each sparsity."""
    if not plots_available():  # the `plots` extra; the card's tables carry the same figures
        return None
    fig = _figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    for i, (layer, points) in enumerate(sorted(curves.items())):
        points = sorted(points)
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", ms=4, color=COLORS[i % len(COLORS)], label=layer)
    ax.set_xlabel("sparsity of this layer alone")
    ax.set_ylabel("metric")
    ax.set_title(f"Sensitivity scan ({stage})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, frameon=False, ncol=2 if len(curves) > 8 else 1, loc="best")
    fig.tight_layout()
    return _png(fig)


def quant_sensitivity_png(stage: str, scan: dict[str, Any]) -> bytes | None:
    """Per-layer int8 cost (all layers int8 but this one): val drop and output error; float-kept layers in red."""
    if not plots_available():  # the `plots` extra; the card's tables carry the same figures
        return None
    layers = scan["layers"]
    kept = set(scan.get("float_layers", []))
    names = [c["layer"].strip("/").removesuffix("/Conv").removesuffix("/Gemm").removesuffix("/MatMul") for c in layers]
    colors = [FRONTIER if c["layer"] in kept else COLORS[0] for c in layers]
    fig = _figure(figsize=(8.5, 0.9 + 0.32 * len(layers)))
    left, right = fig.subplots(1, 2, sharey=True)
    y = range(len(layers))
    scale, unit = (100.0, " (points)") if scan.get("metric") == "accuracy" else (1.0, "")
    left.barh(y, [(scan["reference_metric"] - c["metric_if_float"]) * scale for c in layers], color=colors)
    left.axvline(scan["all_int8_drop"] * scale, color="#333", ls="--", lw=1, label="all int8")
    if scan.get("max_drop") is not None:
        left.axvline(scan["max_drop"] * scale, color=FRONTIER, ls=":", lw=1.2, label="max_drop")
    left.set_yticks(list(y), names, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel(f"val {scan.get('metric', 'metric')} drop{unit}", fontsize=8)
    left.legend(fontsize=7, frameon=False)
    right.barh(y, [c["output_mse_if_float"] for c in layers], color=colors)
    if scan.get("all_int8_output_mse") is not None:
        right.axvline(scan["all_int8_output_mse"], color="#333", ls="--", lw=1)
    right.set_xlabel("output MSE to the float model", fontsize=8)
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"int8 sensitivity ({stage}): everything int8 but the layer named; red = kept float", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _class_key(c: str) -> tuple[int, Any]:
    return (0, int(c)) if c.lstrip("-").isdigit() else (1, c)

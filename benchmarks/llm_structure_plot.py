"""Draw the perplexity-against-KD-tokens curves that ``benchmarks/llm_structure.py --json-out`` wrote.

    .venv/bin/python benchmarks/llm_structure_plot.py width.json depth.json -o curve.png

Each curve is labelled with its pruning stages and parameter ratio; the y axis is perplexity over the original's
(log scale), the x axis KD tokens (log scale; the pruned model before KD is drawn at the first checkpoint's half).
Needs matplotlib (``pip install 'slimtorch[plots]'``).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from slimtorch.io import atomic_write_bytes


def label(result: dict) -> str:
    parts = []
    for stage in result["stages"]:
        if stage["granularity"] == "ffn":
            parts.append(f"FFN {stage['ffn_before']}→{stage['ffn_per_layer']}")
        elif stage["granularity"] == "layer":
            parts.append(f"{len(stage['dropped_layers'])} layers dropped")
        elif stage["granularity"] == "head":
            parts.append("KV groups cut")
    return f"{' + '.join(parts)} ({result['params_after'] / result['params_before']:.3f}× params)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--goal", type=float, default=1.15, help="draw this perplexity ratio as a dashed line")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    devices, top = set(), args.goal
    for path in args.results:
        result = json.loads(path.read_text())
        devices.add(result.get("device", "cpu"))
        curve = result["curve"]
        first = next((row["kd_tokens"] for row in curve if row["kd_tokens"] > 0), 1)
        xs = [row["kd_tokens"] or first / 2 for row in curve]
        ys = [row["perplexity"] / result["perplexity_fp32"] for row in curve]
        ax.plot(xs, ys, marker="o", markersize=3, label=label(result))
        top = max(top, *ys)
    ax.axhline(args.goal, color="grey", linestyle="--", linewidth=1, label=f"goal {args.goal}×")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(0.95, top * 1.1)
    ax.set_yticks([t for t in (1, 1.15, 1.5, 2, 3, 5, 10, 20, 50, 100) if t <= top * 1.1])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}×"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("KD tokens (0 drawn at the left end)")
    ax.set_ylabel("held-out perplexity / original's")
    ax.set_title(f"SmolLM2-135M, 25 % fewer parameters, token KD ({', '.join(sorted(devices))})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(args.output, buf.getvalue())
    print(args.output)


if __name__ == "__main__":
    main()

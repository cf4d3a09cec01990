"""`make figures` fails when an example's final model is measurably slower than its baseline on the machine it ran on."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "figures.py"


def _figures():
    spec = importlib.util.spec_from_file_location("figures_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_final_model_slower_than_its_baseline_fails_the_command(report):
    figures = _figures()
    fast = figures.speedups(report)  # the fixture's final model: 5x (batch 1) and 20x (batch 64) faster
    assert fast["1"][0] == 5.0 and fast["64"][0] == 20.0 and figures.slower_rows([("fast", fast)]) == []
    slow = copy.deepcopy(report)
    final = next(m for m in slow["models"] if m["name"] == slow["final"])
    final["latency_ms"]["64"] = {**final["latency_ms"]["64"], "p50": 20.0, "p10": 19.0, "p90": 21.0}
    assert figures.slower_rows([("slow", figures.speedups(slow))]) == ["slow batch 64: 0.50x"]
    # inside each other's p10–p90 spread: no measurable difference, not a failure
    final["latency_ms"]["64"] = {**final["latency_ms"]["64"], "p50": 10.5, "p10": 9.5, "p90": 11.5}
    base = next(m for m in slow["models"] if m["name"] == slow["baseline"])
    base["latency_ms"]["64"] = {**base["latency_ms"]["64"], "p10": 9.0, "p90": 11.0}
    assert figures.slower_rows([("noise", figures.speedups(slow))]) == []

"""What measuring costs: seconds per part of ``measure()`` on the digits MLPs and a ConvNet.

Run from the project root: ``python benchmarks/measure_cost.py``. Prints a table, then the figures as one
JSON object on the last line. Uses the report card's default evaluate config (batch sizes 1 and 64,
10 warm-up and 50 timed passes, 1 thread, noise levels 0.1 and 0.3) on the digits test split.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from slimtorch import artifact
from slimtorch.data import build_data
from slimtorch.measure import EvaluateConfig, measure, outputs_on
from slimtorch.measure.machine import probe
from slimtorch.models import build_model

PARTS = ["params", "size", "macs", "latency", "accuracy", "robustness"]
MODELS = {
    "mlp 64-1200-1200-10": ("mlp", {"hidden": [1200, 1200]}),
    "mlp 64-32-10": ("mlp", {"hidden": [32]}),
    "cnn 16-32 (digits 8x8)": ("cnn", {"channels": [16, 32]}),
}


def main() -> None:
    torch.manual_seed(0)
    data = build_data("digits", seed=0)
    config = EvaluateConfig()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        warm = build_model("mlp", {"hidden": [8]}, input_shape=data.input_shape, num_classes=data.num_classes)
        t0 = time.perf_counter()
        measure(warm, name="warm-up", stage="-", data=data, config=config)  # one-time imports and lazy init
        first_call_s = time.perf_counter() - t0
        for label, (ref, args) in MODELS.items():
            model = build_model(ref, args, input_shape=data.input_shape, num_classes=data.num_classes)
            out = Path(tmp) / ref / str(len(results))
            artifact.save(model, out)
            base = outputs_on(model, data, config)
            m = measure(model, name=label, stage="-", data=data, config=config, artifact_dir=out, baseline_outputs=base)
            results[label] = {"cost_s": m.cost_s, "total_s": m.seconds, "params": m.params, "macs": m.macs,
                              "p50_ms": {b: t.p50 for b, t in m.latency_ms.items()}, "eval_examples": len(base)}
    header = f"{'model':<24}" + "".join(f"{p:>11}" for p in PARTS) + f"{'total s':>10}"
    print(f"measure() cost in seconds, digits test split ({results[next(iter(results))]['eval_examples']} examples), "
          f"latency at batch {config.latency.batch_sizes} x {config.latency.repeats} repeats")
    print(header)
    print("-" * len(header))
    for label, r in results.items():
        print(f"{label:<24}" + "".join(f"{r['cost_s'].get(p, 0):>11.4f}" for p in PARTS) + f"{r['total_s']:>10.3f}")
    print(f"first measure() call in a process (imports, lazy init): {first_call_s:.2f} s")
    print(json.dumps({"machine": probe().to_json(), "benchmark": "measure_cost", "first_call_s": round(first_call_s, 3), "models": results}))


if __name__ == "__main__":
    main()

"""Hand-made measurements with known ratios, so report tests need no training."""

from __future__ import annotations

import pytest

from slimtorch.measure import Measurement
from slimtorch.measure.measurement import LatencyStats


def make(name, stage, params, nonzero, size, macs, lat1, lat64, acc, agreement=None, compressed=None, runtime="torch"):
    return Measurement(
        name=name, stage=stage, params=params, nonzero_params=nonzero, size_bytes=size,
        compressed_bytes=compressed or size, macs=macs, runtime=runtime, threads=1,
        latency_ms={"1": LatencyStats(p50=lat1, p90=lat1 * 1.1, mean=lat1, std=0.01, repeats=50),
                    "64": LatencyStats(p50=lat64, p90=lat64 * 1.1, mean=lat64, std=0.01, repeats=50)},
        metrics={"accuracy": acc, "per_class_accuracy": {"0": acc, "1": acc - 0.02, "2": min(1.0, acc + 0.01)}},
        agreement=agreement, robustness={"noise_0.1": acc - 0.01, "noise_0.3": acc - 0.05}, notes=[], seconds=0.5,
    )


@pytest.fixture(scope="session")
def make_measurement():
    return make


@pytest.fixture()
def models():
    return [
        make("teacher", "teacher", 100_000, 100_000, 400_000, 100_000, 1.0, 10.0, 0.98, 1.0),
        make("1_distill", "distill", 10_000, 10_000, 40_000, 10_000, 0.8, 1.25, 0.97, 0.96),  # 10× MACs, 1.25× b1
        make("2_prune", "prune", 10_000, 5_000, 40_000, 10_000, 0.8, 1.25, 0.965, 0.95, compressed=22_000),
        make("3_quantize", "quantize", 10_000, 5_000, 10_000, 10_000, 0.2, 0.5, 0.96, 0.95, runtime="onnxruntime"),
    ]


@pytest.fixture()
def stages():
    return [
        {"name": "distill", "model": "1_distill", "seconds": 12.0, "status": "done", "notes": [], "details": {}},
        {"name": "prune", "model": "2_prune", "seconds": 1.5, "status": "done", "notes": ["masks kept"],
         "details": {"sensitivity": {"baseline": 0.98, "layers": {"fc1": [[0.5, 0.97], [0.9, 0.8]], "fc2": [[0.5, 0.96], [0.9, 0.9]]}}}},
        {"name": "quantize", "model": "3_quantize", "seconds": 0.3, "status": "done"},
    ]


@pytest.fixture()
def report(models, stages):
    from slimtorch.report import Report

    recipe = {"name": "unit", "seed": 0, "stages": [{"distill": {"epochs": 1}}, {"prune": {"sparsity": 0.5}}]}
    return Report.create(recipe=recipe, baseline="teacher", final="3_quantize", models=models, stages=stages,
                         warnings=["a run-level warning"], extra={"data": {"source": "digits"}}).to_json()

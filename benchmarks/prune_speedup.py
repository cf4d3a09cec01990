"""Structured pruning speedup: does removing channels make a ResNet-style CNN faster in proportion?

Speedup efficiency = latency speedup / MAC reduction, at batch 1 and 32, in eager torch and
onnxruntime, for slimtorch's prune stage (filter, 50 %, round_to=8) side by side with Torch-Pruning
used directly as its README shows. Goal: >= 0.9. Prints a table, then one JSON line.

Run from the project root: .venv/bin/python benchmarks/prune_speedup.py
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from slimtorch.core import RunContext
from slimtorch.data.bundle import DataBundle
from slimtorch.measure.machine import probe
from slimtorch.measure.macs import quick_counts
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage

torch.set_num_threads(1)  # one thread per runtime: fair and stable on a shared 2-core machine
warnings.filterwarnings("ignore", category=DeprecationWarning)
SHAPE = (3, 32, 32)
WIDTHS = [32, 64, 128, 256]
RUNS = {1: 100, 32: 20}


def ort_runner(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Callable[[], object]:
    import onnxruntime as ort

    model.eval()  # the exporter restores the given module's training flag on all submodules
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: sess.run(None, feed)


def torch_runner(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    model.eval()

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def interleaved_ms(runners: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median ms per runner, timing them in turn so a busy shared machine slows all of them alike."""
    for fn in runners.values():
        for _ in range(max(10, runs // 4)):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(runs):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def torch_pruning_readme(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """Torch-Pruning used directly, as in its README (magnitude importance, ignore the classifier)."""
    import torch_pruning as tp

    imp = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=0.5, ignored_layers=[model.fc], round_to=8)
    pruner.step()
    return model


def main() -> None:
    torch.manual_seed(0)
    dense = build_model("resnet", {"widths": WIDTHS, "input_shape": list(SHAPE)}, num_classes=10).eval()
    ds = TensorDataset(torch.randn(64, *SHAPE), torch.randint(0, 10, (64,)))
    data = DataBundle("random", ds, ds, ds, num_classes=10, input_shape=SHAPE, batch_size=32)
    tmp = Path(tempfile.mkdtemp(prefix="prune_speedup_"))
    ctx = RunContext(data=data, work_dir=tmp / "work")
    slim, record = PruneStage(PruneConfig(sparsity=0.5, granularity="filter", round_to=8)).apply(copy.deepcopy(dense), ctx)
    example = torch.randn(1, *SHAPE)
    tpm = torch_pruning_readme(copy.deepcopy(dense), example)
    models = {"dense": dense, "slimtorch": slim, "torch-pruning": tpm}
    macs = {k: quick_counts(m, example).macs for k, m in models.items()}
    results: dict[str, dict] = {}
    for batch, runs in RUNS.items():
        x = torch.randn(batch, *SHAPE)
        for runtime in ("torch", "onnxruntime"):
            if runtime == "torch":
                runners = {name: torch_runner(m, x) for name, m in models.items()}
            else:
                runners = {name: ort_runner(m, x, tmp / f"{name}_b{batch}.onnx") for name, m in models.items()}
            lat = interleaved_ms(runners, runs)
            for name in ("slimtorch", "torch-pruning"):
                mac_red = macs["dense"] / macs[name]
                speedup = lat["dense"] / lat[name]
                results[f"{name}/{runtime}/b{batch}"] = {
                    "dense_ms": round(lat["dense"], 3), "pruned_ms": round(lat[name], 3), "mac_reduction": round(mac_red, 3),
                    "speedup": round(speedup, 3), "efficiency": round(speedup / mac_red, 3)}
    print(f"ResNet-style CNN widths={WIDTHS} on {SHAPE}: {macs['dense'] / 1e6:.1f} M MACs dense, "
          f"slimtorch {macs['slimtorch'] / 1e6:.1f} M, Torch-Pruning {macs['torch-pruning'] / 1e6:.1f} M")
    print(f"{'pruner/runtime/batch':32} {'dense ms':>9} {'pruned ms':>10} {'MAC red.':>9} {'speedup':>8} {'efficiency':>10}")
    for key, r in results.items():
        print(f"{key:32} {r['dense_ms']:9.3f} {r['pruned_ms']:10.3f} {r['mac_reduction']:9.2f} {r['speedup']:8.2f} {r['efficiency']:10.2f}")
    eff = [r["efficiency"] for k, r in results.items() if k.startswith("slimtorch")]
    met = sum(e >= 0.9 for e in eff)
    print(f"slimtorch: efficiency >= 0.9 in {met} of {len(eff)} cells (min {min(eff):.2f}); stage notes: {record.notes}")
    print(json.dumps({"machine": probe().to_json(), "benchmark": "prune_speedup", "macs_dense": macs["dense"], "macs_slimtorch": macs["slimtorch"],
                      "macs_torch_pruning": macs["torch-pruning"], "results": results,
                      "slimtorch_min_efficiency": round(float(min(eff)), 3),
                      "slimtorch_cells_meeting_goal": int(met)}))


if __name__ == "__main__":
    main()

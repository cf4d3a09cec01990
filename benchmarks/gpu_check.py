"""GPU check: the digits demo and a ResNet-style filter-prune + distill recipe on `cuda` against `cpu`.

Prints, per recipe, the final accuracy on each device, each stage's CPU seconds ÷ CUDA seconds (the same
examples, so the ratio of samples per second), and what the report measured on the GPU: the final torch
model's CUDA latency (CUDA events after warm-up) and peak GPU memory. Then the demo under bf16 and fp16
autocast, whether artifacts written by the GPU run load on the CPU, onnxruntime's providers, and one JSON
line. Without CUDA it says so and prints {"cuda": false}: the CUDA path is then unverified.
"""

from __future__ import annotations

import json
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch

import slimtorch
from slimtorch import artifact
from slimtorch.device import model_device
from slimtorch.measure.machine import probe

CNN = """\
name: gpu-cnn
seed: 0
data: {source: digits, batch_size: 64}
teacher: {model: resnet, args: {widths: [32, 64]}, train: {epochs: 8}}
stages:
  - prune: {sparsity: 0.5, granularity: filter, round_to: 8, recover: distill, finetune_epochs: 5}
evaluate: {latency: {batch_sizes: [1, 64], repeats: 20}, noise_levels: []}
"""


def run(recipe: str, device: str, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    report = slimtorch.compress(recipe, out, force=True, device=device).report
    torch_models = [m for m in report.models if m.runtime == "torch"]
    last_torch = torch_models[-1]
    return {
        "accuracy": report.final_model.metrics["accuracy"],
        "stage_seconds": {s["name"]: s["seconds"] for s in report.stages},
        "wall_s": round(time.perf_counter() - t0, 1),
        "measured_on": {m.name: m.device for m in report.models},
        "torch_model": last_torch.name,
        "latency_p50_ms": {b: t.p50 for b, t in last_torch.latency_ms.items()},
        "peak_memory_bytes": last_torch.peak_memory_bytes,
        "loads_on_cpu": all(model_device(artifact.load(out / "models" / m.name)).type == "cpu" for m in report.models),
    }


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU check did not run (the CUDA path is unverified on this machine).")
        print(json.dumps({"machine": probe().to_json(), "cuda": False}))
        return
    import onnxruntime as ort

    demo = resources.files("slimtorch.recipes").joinpath("demo.yaml").read_text()
    out: dict[str, Any] = {"cuda": True, "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                           "cuda_version": torch.version.cuda, "onnxruntime_providers": ort.get_available_providers()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in (("demo", demo), ("resnet_prune_distill", CNN)):
            cpu, gpu = run(recipe, "cpu", Path(tmp) / f"{name}-cpu"), run(recipe, "cuda", Path(tmp) / f"{name}-cuda")
            speed = {k: round(cpu["stage_seconds"][k] / v, 2) for k, v in gpu["stage_seconds"].items() if v}
            out[name] = {"cpu": cpu, "cuda": gpu, "stage_speedup_on_cuda": speed}
            print(f"{name}: accuracy cpu {cpu['accuracy']:.4f} cuda {gpu['accuracy']:.4f}; wall cpu {cpu['wall_s']} s cuda "
                  f"{gpu['wall_s']} s; stage speedup on cuda: {speed}")
            print(f"  {gpu['torch_model']} measured on {gpu['measured_on'][gpu['torch_model']]}: p50 {gpu['latency_p50_ms']} ms, "
                  f"peak GPU memory {gpu['peak_memory_bytes']} bytes; every artifact loads on the CPU: {gpu['loads_on_cpu']}")
        for precision in ("bf16", "fp16"):
            mixed = demo.replace("seed: 0", f"seed: 0\nprecision: {precision}")
            r = run(mixed, "cuda", Path(tmp) / f"demo-{precision}")
            out[f"demo_{precision}"] = {"accuracy": r["accuracy"], "wall_s": r["wall_s"]}
            print(f"demo {precision} on cuda: accuracy {r['accuracy']:.4f} in {r['wall_s']} s")
    print(f"onnxruntime providers: {out['onnxruntime_providers']}")
    print(json.dumps({"machine": probe().to_json(), **out}))


if __name__ == "__main__":
    main()

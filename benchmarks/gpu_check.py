"""GPU check: the digits demo and a ResNet-style filter-prune + distill recipe on `cuda` against `cpu`.

Prints, per recipe, final accuracy on each device, each stage's CPU seconds ÷ CUDA seconds (the same
examples, so the ratio of KD samples per second) and the CUDA latency of the final torch model (CUDA events after warm-up), then one
JSON line. Without CUDA it says so and prints {"cuda": false}: the CUDA path is then unverified.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from importlib import resources
from pathlib import Path

import torch

import slimtorch

CNN = """\
name: gpu-cnn
seed: 0
data: {source: digits, batch_size: 64}
teacher: {model: resnet, args: {widths: [32, 64]}, train: {epochs: 8}}
stages:
  - prune: {sparsity: 0.5, granularity: filter, round_to: 8, recover: distill, finetune_epochs: 5}
evaluate: {latency: {batch_sizes: [1, 64], repeats: 20}, noise_levels: []}
"""


def cuda_latency_ms(model: torch.nn.Module, example: torch.Tensor, repeats: int = 50) -> float:
    model = model.to("cuda").eval()
    example = example.to("cuda")
    with torch.inference_mode():
        for _ in range(10):
            model(example)
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(example)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(recipe: str, device: str, out: Path) -> dict:
    result = slimtorch.compress(recipe, out, force=True, device=device)
    report = result.report
    final = next(m for m in report["models"] if m["name"] == report["final"])
    seconds = {s["name"]: s["seconds"] for s in report["stages"]}
    return {"accuracy": final["metrics"]["accuracy"], "stage_seconds": seconds, "model": result.model}


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU check did not run (the CUDA path is unverified on this machine).")
        print(json.dumps({"cuda": False}))
        return
    demo = resources.files("slimtorch.recipes").joinpath("demo.yaml").read_text()
    rows, out = [], {"cuda": True, "device": torch.cuda.get_device_name(0)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in (("demo", demo), ("resnet_prune_distill", CNN)):
            cpu = run(recipe, "cpu", Path(tmp) / f"{name}-cpu")
            gpu = run(recipe, "cuda", Path(tmp) / f"{name}-cuda")
            data = slimtorch.build_data("digits")
            example = data.example_batch(64)
            is_ort = getattr(gpu["model"], "slimtorch_runtime", None) == "onnxruntime"
            latency = None if is_ort else cuda_latency_ms(gpu["model"], example)
            speed = {k: cpu["stage_seconds"][k] / gpu["stage_seconds"][k] for k in gpu["stage_seconds"] if gpu["stage_seconds"][k]}
            rows.append((name, cpu["accuracy"], gpu["accuracy"], speed, latency))
            out[name] = {"accuracy_cpu": cpu["accuracy"], "accuracy_cuda": gpu["accuracy"], "stage_speedup": speed,
                         "cuda_latency_ms_b64": latency}
    for name, a_cpu, a_gpu, speed, latency in rows:
        stages = ", ".join(f"{k} {v:.2f}x" for k, v in speed.items())
        print(f"{name}: accuracy cpu {a_cpu:.4f} cuda {a_gpu:.4f}; stage speedup on cuda: {stages}; "
              f"final model CUDA latency (batch 64): {latency if latency is None else f'{latency:.3f} ms'}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

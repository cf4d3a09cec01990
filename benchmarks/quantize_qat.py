"""Post-training int8 vs accuracy-targeted int8 (max_drop) vs quantization-aware training, on two CNNs, in one run.

For the mnist1d CNN and the ResNet-style CNN on digits: train the float model, then quantize it with
the quantize stage four ways and measure each on the same test split, with latency timed side by
side (interleaved rounds, onnxruntime, fixed thread count):

- onnxruntime fp32 (the float model exported; the latency and size reference);
- static int8 (PTQ: QDQ, minmax ranges on 8 calibration batches);
- static int8 with ``max_drop: 0.005`` (layers kept float until the val drop fits, at most a quarter);
- static int8 after QAT (2 epochs, the stage's defaults: lr 1e-4, pure distillation from the float model at T 4).

A third, artificial stress case (a digits MLP with one hidden neuron rescaled by 10^4, the same
function) shows what each does when plain int8 really breaks a model.

Besides test accuracy (coarse: one digits test example is 0.28 points), each int8 model's agreement with
the float model's predictions and the KL divergence of its outputs from the float outputs on the test split.

    .venv/bin/python benchmarks/quantize_qat.py [--threads 1] [--repeats 40] [--qat-epochs 2]

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.nn import functional as F

from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.export import to_ort
from slimtorch.measure.accuracy import predict, task_metric
from slimtorch.measure.latency import time_interleaved
from slimtorch.models import build_model
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.train import TrainConfig, fit
from slimtorch.train.losses import labeled_cross_entropy

MODELS = {
    "mnist1d CNN 32-64-64-64": ("mnist1d", "cnn", {"channels": [32, 64, 64, 64], "hidden": 128}, 8),
    "digits ResNet 32-64": ("digits", "resnet", {"widths": [32, 64], "blocks": [1, 1]}, 6),
    # A stress case, not a real model: the same trained function with one hidden neuron scaled up 10^4
    # (and its outgoing weights down), so one per-tensor activation range swallows all the others.
    "digits MLP 128-64, outlier neuron": ("digits", "mlp", {"hidden": [128, 64]}, 12),
}


@torch.no_grad()
def outlier_neuron_(model: torch.nn.Module) -> None:
    """Scale hidden neuron 0 of the first Linear by 10^4 and its outgoing weights by 10^-4 (ReLU: same function)."""
    first, second = model.net[1], model.net[3]
    first.weight[0] *= 1e4
    first.bias[0] *= 1e4
    second.weight[:, 0] /= 1e4


def train_float(source: str, name: str, args: dict, epochs: int, work: Path) -> tuple[torch.nn.Module, RunContext]:
    data = build_data(source, seed=0, batch_size=64)
    torch.manual_seed(0)
    model = build_model(name, args, input_shape=data.input_shape, num_classes=data.num_classes)
    ctx = RunContext(data=data, seed=0, work_dir=work)
    fit(model, lambda m, x, y: labeled_cross_entropy(m(x), y), data.loader("train", shuffle=True), TrainConfig(epochs=epochs, lr=3e-3),
        ctx, evaluate=lambda m: task_metric(m, data, "val"))
    return model.eval(), RunContext(data=data, teacher=model, seed=0, work_dir=work / "q")


def variants(model: torch.nn.Module, ctx: RunContext, qat_epochs: int) -> list[tuple[str, torch.nn.Module, dict]]:
    out = [("onnxruntime fp32", to_ort(model, ctx.data.example_batch(4)), {"seconds": 0.0})]
    configs = {
        "static int8 (PTQ)": QuantizeConfig(mode="static_int8"),
        "static int8, max_drop 0.005": QuantizeConfig(mode="static_int8", max_drop=0.005),
        f"static int8 after QAT ({qat_epochs} ep)": QuantizeConfig(mode="static_int8", qat={"epochs": qat_epochs}),
    }
    for label, cfg in configs.items():
        start = time.perf_counter()
        q, record = QuantizeStage(cfg).apply(model, ctx)
        facts: dict = {"seconds": round(time.perf_counter() - start, 1)}
        scan = record.details.get("quant_sensitivity")
        if scan:
            facts.update(float_layers=scan["float_layers"], layers=len(scan["layers"]), is_met=scan["is_met"],
                         val_drop_all_int8=scan["all_int8_drop"], val_drop=scan["final_drop"])
        if "qat" in record.details:
            facts["qat"] = {k: record.details["qat"][k] for k in ("val_after_calibration", "val_after_training", "epochs_run",
                                                                  "parity_vs_fake_quant")}
        out.append((label, q, facts))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--qat-epochs", type=int, default=2)
    opts = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimtorch-bench-") as tmp:
        for model_name, (source, name, args, epochs) in MODELS.items():
            model, ctx = train_float(source, name, args, epochs, Path(tmp) / name)
            if "outlier" in model_name:
                outlier_neuron_(model)
            fp32_test = task_metric(model, ctx.data, "test")
            reference, _ = predict(model, ctx.data.loader("test"))
            found = variants(model, ctx, opts.qat_epochs)
            inputs = {"1": ctx.data.example_batch(1), "64": ctx.data.example_batch(64)}
            timings = time_interleaved([(m, inputs) for _, m, _ in found], warmup=10, repeats=opts.repeats, threads=opts.threads)
            for (label, m, facts), timing in zip(found, timings):
                test = task_metric(m, ctx.data, "test")
                outputs, _ = predict(m, ctx.data.loader("test"))
                kl = F.kl_div(F.log_softmax(outputs, -1), F.log_softmax(reference, -1), log_target=True, reduction="batchmean")
                rows.append({"model": model_name, "variant": label, "test_accuracy": round(test, 4),
                             "agreement_with_fp32": round((outputs.argmax(-1) == reference.argmax(-1)).float().mean().item(), 4),
                             "kl_to_fp32": float(f"{kl.item():.3g}"),
                             "delta_points": round(100 * (test - fp32_test), 2), "onnx_bytes": len(m.onnx_bytes),
                             "p50_ms_b1": round(timing["1"]["p50"], 4), "p50_ms_b64": round(timing["64"]["p50"], 4),
                             "torch_fp32_test_accuracy": round(fp32_test, 4), "test_examples": len(ctx.data.test), **facts})
    print("| model | variant | test acc | Δ pts vs fp32 | agree w/ fp32 | KL to fp32 | ONNX bytes | p50 ms b1 | p50 ms b64 | "
          "layers kept float | quantize s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kept = ", ".join(r.get("float_layers", [])) or ("none" if "float_layers" in r else "")
        if "float_layers" in r:
            kept = f"{len(r['float_layers'])}/{r['layers']} ({kept})" + ("" if r["is_met"] else ", budget not met")
        print(f"| {r['model']} | {r['variant']} | {100 * r['test_accuracy']:.2f} % | {r['delta_points']:+.2f} | "
              f"{100 * r['agreement_with_fp32']:.1f} % | {r['kl_to_fp32']:.2g} | {r['onnx_bytes']:,} | "
              f"{r['p50_ms_b1']:.3f} | {r['p50_ms_b64']:.3f} | {kept} | {r['seconds']} |")
    goals = {}
    for model_name in MODELS:
        ptq = next(r for r in rows if r["model"] == model_name and "PTQ" in r["variant"])
        qat = next(r for r in rows if r["model"] == model_name and "QAT" in r["variant"])
        md = next(r for r in rows if r["model"] == model_name and "max_drop" in r["variant"])
        lost = -ptq["delta_points"]
        goals[model_name] = {
            "ptq_lost_points": lost,
            "qat_recovered_fraction": round((qat["delta_points"] - ptq["delta_points"]) / lost, 3) if lost > 0 else None,
            "qat_within_0.2_points_of_fp32": qat["delta_points"] >= -0.2,
            "max_drop_met_on_val": md["is_met"], "max_drop_float_layers": len(md["float_layers"]), "layers": md["layers"],
        }
    print(json.dumps({"threads": opts.threads, "rows": rows, "goals": goals}))


if __name__ == "__main__":
    main()

"""slimtorch PTQ vs max_drop vs QAT vs NNCF's ``nncf.quantize``, each on onnxruntime and on OpenVINO, in one run.

For the mnist1d CNN and the ResNet-style CNN on digits: train the float model, then quantize it with
the quantize stage five ways and measure each graph on the same test split in both runtimes, with
latency timed side by side (all models and runtimes in interleaved rounds, fixed thread count):

- fp32 (the float model exported; the latency and size reference; on OpenVINO also at bf16 inference
  precision, OpenVINO's own default on CPUs with bf16 instructions);
- static int8 (PTQ: onnxruntime's quantizer, QDQ, minmax ranges on 8 calibration batches);
- static int8 with ``max_drop: 0.005`` (layers kept float until the val drop fits, at most a quarter);
- static int8 after QAT (2 epochs, the stage's defaults: lr 1e-4, pure distillation from the float model at T 4);
- static int8 by NNCF (``quantizer: nncf``: ``nncf.quantize`` with its defaults on the same 8 calibration batches).

Every int8 graph is a QDQ ONNX file; the same bytes run in onnxruntime and in OpenVINO. "int8 layers"
counts the Conv/Gemm/MatMul layers each runtime really executes in int8 (onnxruntime: the fused
QLinear*/QGemm/integer nodes of its optimised graph; OpenVINO: layers whose runtime precision is u8/i8).

A third, artificial stress case (a digits MLP with one hidden neuron rescaled by 10^4, the same
function) shows what each does when plain int8 really breaks a model.

Besides test accuracy (coarse: one digits test example is 0.28 points), each int8 model's agreement with
the float model's predictions and the KL divergence of its outputs from the float outputs on the test split.

    .venv/bin/python benchmarks/quantize_qat.py [--threads 1] [--repeats 40] [--qat-epochs 2]

Needs the openvino extra (``pip install 'slimtorch[openvino]'``: OpenVINO and NNCF).

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx
import onnxruntime
import torch
from torch.nn import functional as F

from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.export import to_ort
from slimtorch.measure.accuracy import predict, task_metric
from slimtorch.measure.latency import time_interleaved
from slimtorch.measure.machine import probe
from slimtorch.models import build_model
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.quantize._openvino import nncf_version
from slimtorch.runtime import OpenVINOModule, OrtModule, openvino_version
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


# Layer ops of onnxruntime's optimised graph: float ones, and the int8 kernels a QDQ pair fuses into.
FLOAT_LAYER_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
INT8_LAYER_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                  "DynamicQuantizeMatMul"}
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_facts() -> dict:
    """The CPU's name and the instruction sets int8/bf16 kernels look for (from /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines()[:40] if ":" in line)
    flags = set(fields.get("flags\t\t", "").split())
    return {"cpu": fields.get("model name\t", platform.processor()).strip(), "flags": {f: f in flags for f in CPU_FLAGS}}


def ort_layer_precision(onnx_bytes: bytes) -> dict:
    """Conv/Gemm/MatMul layers in onnxruntime's optimised graph of ``onnx_bytes``, and how many run as int8 kernels."""
    with tempfile.TemporaryDirectory(prefix="slimtorch-ortopt-") as tmp:
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        options.log_severity_level = 3
        onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    int8 = sum(n for op, n in ops.items() if op in INT8_LAYER_OPS)
    return {"weight_layers": int8 + sum(n for op, n in ops.items() if op in FLOAT_LAYER_OPS), "int8_weight_layers": int8}


def variants(model: torch.nn.Module, ctx: RunContext, qat_epochs: int) -> list[tuple[str, bytes, dict]]:
    """``(label, ONNX bytes, facts)`` of the float graph and of each int8 graph the quantize stage makes."""
    out = [("fp32", to_ort(model, ctx.data.example_batch(4)).onnx_bytes, {"seconds": 0.0})]
    configs = {
        "static int8 (PTQ)": QuantizeConfig(mode="static_int8"),
        "static int8, max_drop 0.005": QuantizeConfig(mode="static_int8", max_drop=0.005),
        f"static int8 after QAT ({qat_epochs} ep)": QuantizeConfig(mode="static_int8", qat={"epochs": qat_epochs}),
        "static int8 by NNCF": QuantizeConfig(mode="static_int8", quantizer="nncf"),
    }
    for label, cfg in configs.items():
        start = time.perf_counter()
        q, record = QuantizeStage(cfg).apply(model, ctx)
        facts: dict = {"seconds": round(time.perf_counter() - start, 1), "backend": record.details["backend"]}
        scan = record.details.get("quant_sensitivity")
        if scan:
            facts.update(float_layers=scan["float_layers"], layers=len(scan["layers"]), is_met=scan["is_met"],
                         val_drop_all_int8=scan["all_int8_drop"], val_drop=scan["final_drop"])
        if "qat" in record.details:
            facts["qat"] = {k: record.details["qat"][k] for k in ("val_after_calibration", "val_after_training", "epochs_run",
                                                                  "parity_vs_fake_quant")}
        out.append((label, q.onnx_bytes, facts))
    return out


def runtimes(onnx_bytes: bytes, is_float: bool, threads: int) -> list[tuple[str, torch.nn.Module]]:
    """The same graph in onnxruntime and in OpenVINO (the float one also at OpenVINO's bf16 inference precision)."""
    out: list[tuple[str, torch.nn.Module]] = [("onnxruntime", OrtModule(onnx_bytes, threads=threads)),
                                              ("openvino", OpenVINOModule(onnx_bytes, threads=threads))]
    if is_float:
        out.append(("openvino bf16", OpenVINOModule(onnx_bytes, threads=threads, precision="bf16")))
    return out


def measure_model(model_name: str, source: str, name: str, args: dict, epochs: int, work: Path, opts: argparse.Namespace) -> list[dict]:
    model, ctx = train_float(source, name, args, epochs, work)
    if "outlier" in model_name:
        outlier_neuron_(model)
    fp32_test = task_metric(model, ctx.data, "test")
    reference, _ = predict(model, ctx.data.loader("test"))
    entries = [(label, runtime, m, graph, facts) for label, graph, facts in variants(model, ctx, opts.qat_epochs)
               for runtime, m in runtimes(graph, label == "fp32", opts.threads)]
    inputs = {"1": ctx.data.example_batch(1), "64": ctx.data.example_batch(64)}
    timings = time_interleaved([(m, inputs) for _, _, m, _, _ in entries], warmup=10, repeats=opts.repeats, threads=opts.threads)
    rows = []
    for (label, runtime, m, graph, facts), timing in zip(entries, timings):
        outputs, _ = predict(m, ctx.data.loader("test"))
        test = task_metric(m, ctx.data, "test")
        kl = F.kl_div(F.log_softmax(outputs, -1), F.log_softmax(reference, -1), log_target=True, reduction="batchmean")
        layers = m.runtime_facts() if isinstance(m, OpenVINOModule) else ort_layer_precision(graph)
        rows.append({"model": model_name, "variant": label, "runtime": runtime, "test_accuracy": round(test, 4),
                     "agreement_with_fp32": round((outputs.argmax(-1) == reference.argmax(-1)).float().mean().item(), 4),
                     "kl_to_fp32": float(f"{kl.item():.3g}"), "delta_points": round(100 * (test - fp32_test), 2),
                     "onnx_bytes": len(graph), "weight_layers": layers["weight_layers"],
                     "int8_weight_layers": layers["int8_weight_layers"],
                     "p50_ms_b1": round(timing["1"].p50, 4), "p50_ms_b64": round(timing["64"].p50, 4),
                     "p10_ms_b1": round(timing["1"].p10 or 0.0, 4), "p10_ms_b64": round(timing["64"].p10 or 0.0, 4),
                     "torch_fp32_test_accuracy": round(fp32_test, 4), "test_examples": len(ctx.data.test), **facts})
    for r in rows:  # speed against the float graph on the same runtime (OpenVINO fp32 at f32)
        base = next(b for b in rows if b["model"] == r["model"] and b["variant"] == "fp32" and b["runtime"] == r["runtime"].split()[0])
        r["speedup_vs_fp32_b1"] = round(base["p50_ms_b1"] / r["p50_ms_b1"], 3)
        r["speedup_vs_fp32_b64"] = round(base["p50_ms_b64"] / r["p50_ms_b64"], 3)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| model | variant | runtime | test acc | Δ pts | agree w/ fp32 | KL to fp32 | ONNX bytes | int8 layers | p50 ms b1 | "
          "× fp32 b1 | p50 ms b64 | × fp32 b64 | kept float | quantize s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kept = ""
        if "float_layers" in r:
            kept = f"{len(r['float_layers'])}/{r['layers']}" + ("" if r["is_met"] else ", budget not met")
        print(f"| {r['model']} | {r['variant']} | {r['runtime']} | {100 * r['test_accuracy']:.2f} % | {r['delta_points']:+.2f} | "
              f"{100 * r['agreement_with_fp32']:.1f} % | {r['kl_to_fp32']:.2g} | {r['onnx_bytes']:,} | "
              f"{r['int8_weight_layers']}/{r['weight_layers']} | {r['p50_ms_b1']:.3f} | {r['speedup_vs_fp32_b1']:.2f} | "
              f"{r['p50_ms_b64']:.3f} | {r['speedup_vs_fp32_b64']:.2f} | {kept} | {r['seconds']} |")


def print_side_by_side(rows: list[dict]) -> None:
    """One line per graph: the two runtimes next to each other (accuracy once when both agree)."""
    print("| model | variant | ONNX bytes | test acc | KL to fp32 | int8 layers ORT / OV | p50 ms b1 ORT / OV | p50 ms b64 ORT / OV |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["runtime"] != "onnxruntime":
            continue
        ov = next(o for o in rows if o["model"] == r["model"] and o["variant"] == r["variant"] and o["runtime"] == "openvino")
        acc = f"{100 * r['test_accuracy']:.2f} %" + ("" if ov["test_accuracy"] == r["test_accuracy"] else f" / {100 * ov['test_accuracy']:.2f} %")
        print(f"| {r['model']} | {r['variant']} | {r['onnx_bytes']:,} | {acc} | {r['kl_to_fp32']:.2g} | "
              f"{r['int8_weight_layers']}/{r['weight_layers']} / {ov['int8_weight_layers']}/{ov['weight_layers']} | "
              f"{r['p50_ms_b1']:.3f} / {ov['p50_ms_b1']:.3f} | {r['p50_ms_b64']:.3f} / {ov['p50_ms_b64']:.3f} |")
        bf16 = next((o for o in rows if o["model"] == r["model"] and o["variant"] == r["variant"] and o["runtime"] == "openvino bf16"), None)
        if bf16:
            print(f"| | fp32 graph, OpenVINO at bf16 precision | {bf16['onnx_bytes']:,} | {100 * bf16['test_accuracy']:.2f} % | "
                  f"{bf16['kl_to_fp32']:.2g} | – / 0/{bf16['weight_layers']} | – / {bf16['p50_ms_b1']:.3f} | – / {bf16['p50_ms_b64']:.3f} |")


def goals_of(rows: list[dict]) -> dict:
    goals = {}
    for model_name in MODELS:
        ort = [r for r in rows if r["model"] == model_name and r["runtime"] == "onnxruntime"]
        ptq, qat, md = (next(r for r in ort if key in r["variant"]) for key in ("PTQ", "QAT", "max_drop"))
        lost = -ptq["delta_points"]
        faster = {}
        for variant in dict.fromkeys(r["variant"] for r in ort):
            pair = {r["runtime"]: r for r in rows if r["model"] == model_name and r["variant"] == variant and r["runtime"] != "openvino bf16"}
            faster[variant] = {f"b{b}": min(pair, key=lambda rt: pair[rt][f"p50_ms_b{b}"]) for b in (1, 64)}
        goals[model_name] = {
            "ptq_lost_points": lost,
            "qat_recovered_fraction": round((qat["delta_points"] - ptq["delta_points"]) / lost, 3) if lost > 0 else None,
            "qat_within_0.2_points_of_fp32": qat["delta_points"] >= -0.2,
            "max_drop_met_on_val": md["is_met"], "max_drop_float_layers": len(md["float_layers"]), "layers": md["layers"],
            "faster_runtime": faster,
        }
    return goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--qat-epochs", type=int, default=2)
    opts = parser.parse_args()
    rows = []
    load_before = os.getloadavg()  # the machine is shared: how busy it was is part of the result
    with tempfile.TemporaryDirectory(prefix="slimtorch-bench-") as tmp:
        for model_name, (source, name, args, epochs) in MODELS.items():
            rows += measure_model(model_name, source, name, args, epochs, Path(tmp) / name, opts)
    load = {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()}
    print_table(rows)
    print()
    print_side_by_side(rows)
    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "openvino": openvino_version(), "nncf": nncf_version()}
    print(json.dumps({"machine": probe().to_json(), "threads": opts.threads, "repeats": opts.repeats, **cpu_facts(), "load_average": load, "versions": versions,
                      "rows": rows, "goals": goals_of(rows)}))

if __name__ == "__main__":
    main()

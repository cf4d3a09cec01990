"""all-MiniLM-L6-v2 through the whole pipeline: the hand-tuned recipe vs the planner, measured in one run.

Runs ``examples/minilm.yaml`` (hand-tuned: structural pruning → layer-wise distillation from the
original → int8 ONNX) and the same data/teacher/recovery with a planner ``target: {speedup: S, batch: 8}``
instead of hand-picked pruning, then measures side by side, interleaved, on 1 thread, with onnxruntime
dynamic int8 of the unmodified model as a second reference:

- p50 latency of a batch of 8 held-out sentences padded/truncated to 128 tokens, against torch fp32
  of the original (the speedup), as wall time and as the timing thread's CPU time (``time.thread_time``:
  on a machine shared with other jobs it counts only this thread's work, so it moves less with the load);
- fidelity: mean (and p10 / min) cosine of each model's sentence embeddings to the original's, on
  held-out test sentences that no stage trained on;
- the recovery curve: validation cosine after each distillation epoch (``examples_per_epoch`` examples).

Run from the project root: ``.venv/bin/python benchmarks/pipeline_minilm.py`` (each run trains for at
most the recipe's ``resources.max_stage_seconds``, 30 minutes). ``--no-planner`` skips the planner run;
``--out DIR`` keeps both runs' report cards and ``--resume`` then reuses their finished steps;
``--requantize DIR`` adds a saved float student quantized with the recipe's quantize stage (an earlier
run's recovery, re-quantized, without training again).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import yaml
from torch.nn import functional as F

import slimtorch
from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.measure.accuracy import predict
from slimtorch.measure.latency import pinned_threads
from slimtorch.measure.machine import probe
from slimtorch.models import build_model
from slimtorch.quantize import QuantizeConfig, QuantizeStage

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "minilm.yaml"
GOAL_SPEEDUP, GOAL_COSINE = 3.0, 0.98


def planner_recipe(hand: dict[str, Any], speedup: float, recovery_steps: int | None) -> dict[str, Any]:
    """The hand recipe's data, teacher and recovery, with a budget instead of hand-picked prune/quantize stages."""
    recipe = copy.deepcopy(hand)
    recipe["name"] = "minilm_planned"
    # The planner times candidates on data.example_batch(8): pad those to 128 tokens like the benchmark batch.
    recipe["data"]["args"] = {**recipe["data"]["args"], "max_length": 128, "padding": "max_length"}
    # Recovery only (the plan adds prune/quantize): the hand recipe's distillation, under the same time budget.
    # Its batches are 128 tokens (about 6x the hand recipe's, padded to the longest sentence), so each step costs more.
    limit = {} if recovery_steps is None else {"max_steps": recovery_steps}
    recipe["stages"] = [{"distill": {**s["distill"], **limit}} for s in recipe["stages"] if "distill" in s]
    # The int8 candidates are quantized as the hand recipe quantizes (eager attention, smoothing); layers rank by block
    # influence (the planner's default criterion for granularity: layer).
    quantize = next((s["quantize"] for s in hand["stages"] if "quantize" in s), {})
    recipe["target"] = {"speedup": speedup, "batch": 8, "min_accuracy": GOAL_COSINE, "runtime": "onnxruntime",
                        "granularity": "layer", "sparsities": [0.0, 0.17], "quantize": ["dynamic_int8"], "repeats": 5,
                        "quantize_args": {k: v for k, v in quantize.items() if k not in ("mode", "runtime")}}
    return recipe


@torch.no_grad()
def interleaved_ms(models: dict[str, torch.nn.Module], batch: dict[str, torch.Tensor], repeats: int,
                   warmup: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time models in turn (A, B, C, A, B, C, ...) on one thread so machine load hits all alike: (wall ms, thread CPU ms)."""
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        with pinned_threads(model, 1):
            for _ in range(warmup):
                model(**batch)
    for _ in range(repeats):
        for name, model in models.items():
            with pinned_threads(model, 1):
                start, start_cpu = time.perf_counter(), time.thread_time()
                model(**batch)
                cpu[name].append((time.thread_time() - start_cpu) * 1e3)
                wall[name].append((time.perf_counter() - start) * 1e3)
    return wall, cpu


def cosines(model: torch.nn.Module, reference: torch.Tensor, loader: Any) -> torch.Tensor:
    with pinned_threads(model, 1):
        out, _ = predict(model, loader)
    return F.cosine_similarity(out.flatten(1), reference.flatten(1), dim=-1)


def run(recipe: dict[str, Any], out: Path, resume: bool) -> tuple[slimtorch.RunResult, float]:
    start = time.perf_counter()
    result = slimtorch.compress(recipe, out=out, force=not resume, resume=resume)
    return result, time.perf_counter() - start


def recovery_curve(result: slimtorch.RunResult) -> list[dict[str, float]]:
    """Validation cosine after each distillation epoch of the run's (first) distill stage."""
    for stage in result.report.to_json()["stages"]:
        hops = (stage.get("details") or {}).get("hops")
        if hops:
            return [{"epoch": h["epoch"] + 1, "val_cosine": h["val"], "loss": h["loss"]} for h in hops[-1]["history"]]
    return []


def stage_summary(result: slimtorch.RunResult) -> list[dict[str, Any]]:
    """Per model of the run: name, cosine on the report's eval sentences, b8 p50 of the report card."""
    rows = []
    for m in result.report.models:
        lat = m.latency_ms.get("8")
        rows.append({"model": m.name, "cosine": m.metrics.get("cosine"), "b8_p50_ms": None if lat is None else lat.p50,
                     "params": m.params, "size_bytes": m.size_bytes})
    return rows


def requantized(student_dir: Path, hand: dict[str, Any]) -> torch.nn.Module:
    """A saved float student through the hand recipe's quantize stage, calibrated on the recipe's training data."""
    quantize = next(s["quantize"] for s in hand["stages"] if "quantize" in s)
    d = hand["data"]
    data = build_data(d["source"], args=d.get("args", {}), seed=hand.get("seed", 0), batch_size=d.get("batch_size", 32))
    out, _ = QuantizeStage(QuantizeConfig(**quantize)).apply(slimtorch.load(student_dir).eval(),
                                                             RunContext(data=data, task="embedding", seed=hand.get("seed", 0)))
    return out.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--speedup", type=float, default=GOAL_SPEEDUP, help="the planner's budget")
    parser.add_argument("--no-planner", action="store_true")
    parser.add_argument("--planner-steps", type=int, default=None, help="cap on the planner's recovery steps (default: the "
                        "hand recipe's recovery, under the same time budget)")
    parser.add_argument("--resume", action="store_true", help="reuse finished, unchanged steps of runs kept in --out")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--held-out", type=int, default=500, help="test sentences for fidelity")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--requantize", type=Path, default=None, help="a saved float student (e.g. an earlier run's "
                        "models/2_distill): quantized with the recipe's quantize stage and measured beside the runs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    hand = yaml.safe_load(args.recipe.read_text())
    tmp = tempfile.TemporaryDirectory()
    root = args.out or Path(tmp.name)

    hand_result, hand_s = run(hand, root / "hand", args.resume)
    runs = {"hand-tuned": (hand_result, hand_s)}
    plan = None
    if not args.no_planner:
        planned, planned_s = run(planner_recipe(hand, args.speedup, args.planner_steps), root / "planned", args.resume)
        runs["planner"] = (planned, planned_s)
        plan = planned.report.to_json().get("plan")

    # Held-out test sentences of the hand recipe's data (same seed/split as the runs: never trained on).
    d = hand["data"]
    data = build_data("text", args={**d.get("args", {}), "max_length": 128, "padding": "longest"}, seed=hand.get("seed", 0), batch_size=32)
    original = build_model("hf:minilm", {}).eval()
    test = torch.utils.data.Subset(data.test, range(min(args.held_out, len(data.test))))
    loader = data.loader(test)
    with pinned_threads(original, 1):
        reference, _ = predict(original, loader)
    tokenizer = data.collate_fn.tokenizer
    sentences = [data.test[i][0] for i in range(8)]
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}  # (8, 128) each

    # The second reference: onnxruntime dynamic int8 of the unmodified model, as the quantize stage makes it by default.
    ort_int8, _ = QuantizeStage(QuantizeConfig(mode="dynamic_int8", runtime="onnxruntime", per_channel=True)).apply(
        original, RunContext(data=data, task="embedding", seed=hand.get("seed", 0)))
    models: dict[str, torch.nn.Module] = {"torch fp32 (original)": original, "ort int8 (original)": ort_int8.eval()}
    models.update({name: r.model.eval() for name, (r, _) in runs.items()})
    if args.requantize is not None:
        models["saved student, int8"] = requantized(args.requantize, hand)
    timings, cpu_times = interleaved_ms(models, batch, repeats=args.repeats, warmup=3)
    p50 = {k: statistics.median(v) for k, v in timings.items()}
    cpu50 = {k: statistics.median(v) for k, v in cpu_times.items()}
    base, base_cpu = p50["torch fp32 (original)"], cpu50["torch fp32 (original)"]
    rows = []
    for name, model in models.items():
        cos = cosines(model, reference, loader) if name != "torch fp32 (original)" else torch.ones(1)
        r = runs.get(name)
        rows.append({"variant": name, "p50_ms": round(p50[name], 2), "spread_ms": [round(min(timings[name]), 2), round(max(timings[name]), 2)],
                     "speedup": round(base / p50[name], 3), "cpu_p50_ms": round(cpu50[name], 2),
                     "cpu_speedup": round(base_cpu / cpu50[name], 3),
                     "vs_ort_int8": round(p50["ort int8 (original)"] / p50[name], 3), "cosine_mean": round(cos.mean().item(), 4),
                     "cosine_p10": round(cos.quantile(0.1).item(), 4), "cosine_min": round(cos.min().item(), 4),
                     "size_bytes": r[0].report.to_json()["models"][-1].get("size_bytes") if r else None,
                     "stages": [s.get("name", s.get("model")) for s in r[0].report.to_json()["stages"]] if r else [],
                     "run_s": round(r[1], 1) if r else None,
                     "meets_goal": base / p50[name] >= GOAL_SPEEDUP and cos.mean().item() >= GOAL_COSINE})

    print(f"all-MiniLM-L6-v2, batch 8 x 128 tokens, 1 thread, {args.repeats} interleaved repeats; fidelity on {len(test)} held-out sentences")
    print(f"{'variant':<24} {'p50 ms':>8} {'speedup':>8} {'cpu ms':>8} {'cpu x':>6} {'/int8':>6} {'cos mean':>9} {'cos p10':>8} "
          f"{'cos min':>8} {'MB':>7} {'run s':>7}  goal")
    for r in rows:
        mb = f"{r['size_bytes'] / 1e6:.1f}" if r["size_bytes"] else "-"
        print(f"{r['variant']:<24} {r['p50_ms']:>8.1f} {r['speedup']:>7.2f}x {r['cpu_p50_ms']:>8.1f} {r['cpu_speedup']:>5.2f}x "
              f"{r['vs_ort_int8']:>5.2f}x {r['cosine_mean']:>9.4f} {r['cosine_p10']:>8.4f} "
              f"{r['cosine_min']:>8.4f} {mb:>7} {r['run_s'] or '-':>7}  {'yes' if r['meets_goal'] else 'no'}")
    for name, (r, _) in runs.items():
        print(f"\n{name} run, step by step (report card: cosine on its eval sentences, b8 p50 at the data's padding):")
        for s in stage_summary(r):
            print(f"  {s['model']:<28} cosine {s['cosine'] if s['cosine'] is None else round(s['cosine'], 4)!s:<8} "
                  f"b8 p50 {s['b8_p50_ms'] if s['b8_p50_ms'] is None else round(s['b8_p50_ms'], 1)!s:>7} ms")
        curve = recovery_curve(r)
        if curve:
            print("  recovery (val cosine after each distillation epoch): "
                  + ", ".join(f"{c['epoch']}: {c['val_cosine']:.4f}" for c in curve))
        for w in r.report.warnings:
            print(f"  warning: {w}")
    if plan is not None:
        print(f"\nplanner: {plan['message']}")
        for c in plan["candidates"]:
            print(f"  sparsity {c['sparsity']:<5} quantize {c['quantize']:<13} {c['latency_ms']:>8.1f} ms  "
                  f"cosine before recovery {c['val_metric_before_recovery']:.4f}  meets budget {c['meets_budget']}  chosen {c['chosen']}")
    summary = {
        "benchmark": "pipeline_minilm", "batch": 8, "tokens": 128, "threads": 1, "held_out": len(test),
        "goal": {"speedup": GOAL_SPEEDUP, "cosine": GOAL_COSINE}, "rows": rows,
        "steps": {name: stage_summary(r) for name, (r, _) in runs.items()},
        "recovery": {name: recovery_curve(r) for name, (r, _) in runs.items()},
        "plan": None if plan is None else {k: plan[k] for k in ("prune", "quantize", "is_feasible", "message", "baseline_latency_ms", "candidates")},
    }
    tmp.cleanup()
    print(json.dumps({"machine": probe().to_json(), **summary}))


if __name__ == "__main__":
    main()

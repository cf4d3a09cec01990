"""Scenario-2 gap recovery on digits: 10 % of the labels, the other 90 % as an unlabeled transfer set.

Per seed: a 64-1200-1200-10 teacher trained on all labels; a 64-32-10 student trained from scratch on the
10 % labeled part only; the same student distilled (Hinton KD, T = 2) on labeled + transfer inputs.
Gap recovered = (acc_KD − acc_scratch) / (acc_teacher − acc_scratch), on the test split, averaged over
seeds. Run from the project root: ``python benchmarks/distill_gap.py [--seeds 0 1 2]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from slimtorch.core import RunContext, forward, seed_everything
from slimtorch.data import DataBundle, build_data
from slimtorch.distill import DistillConfig, DistillStage
from slimtorch.measure.accuracy import accuracy_of, predict
from slimtorch.measure.machine import probe
from slimtorch.models import build_model
from slimtorch.train import TrainConfig, fit


def accuracy(model: torch.nn.Module, data: DataBundle, split: str = "test") -> float:
    return accuracy_of(*predict(model, data.loader(split)))


def train_on_labels(model: torch.nn.Module, data: DataBundle, config: TrainConfig, seed: int, tmp: Path) -> torch.nn.Module:
    fit(model, lambda m, x, y: F.cross_entropy(forward(m, x), y), data.loader("train", shuffle=True, seed=seed), config,
        RunContext(data=data, seed=seed, work_dir=tmp), evaluate=lambda m: accuracy(m, data, "val"))
    return model


def one_seed(seed: int, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    full = build_data("digits", seed=seed)
    part = build_data("digits", seed=seed, labeled_fraction=args.labeled_fraction)
    seed_everything(seed)
    teacher = build_model("mlp", {"hidden": [1200, 1200], "dropout": 0.2}, input_shape=full.input_shape, num_classes=10)
    train_on_labels(teacher, full, TrainConfig(epochs=args.teacher_epochs, lr=1e-3), seed, tmp / "teacher")
    make_student = lambda: build_model("mlp", {"hidden": [32]}, input_shape=full.input_shape, num_classes=10)
    seed_everything(seed)
    scratch = train_on_labels(make_student(), part, TrainConfig(epochs=args.scratch_epochs, lr=args.lr), seed, tmp / "scratch")
    seed_everything(seed)
    cfg = DistillConfig(temperature=args.temperature, alpha=args.alpha, epochs=args.kd_epochs, lr=args.lr)
    kd, _ = DistillStage(cfg).apply(make_student(), RunContext(data=part, teacher=teacher, seed=seed, work_dir=tmp / "kd"))
    acc = {"teacher": accuracy(teacher, full), "scratch": accuracy(scratch, full), "kd": accuracy(kd, full)}
    acc["recovered"] = (acc["kd"] - acc["scratch"]) / (acc["teacher"] - acc["scratch"])
    return acc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labeled-fraction", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--scratch-epochs", type=int, default=400, help="the labeled 10 %% is ~2 batches per epoch")
    parser.add_argument("--kd-epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows.append({"seed": seed, **one_seed(seed, args, Path(tmp) / str(seed))})
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("teacher", "scratch", "kd", "recovered")}
    print(f"Digits scenario 2: {args.labeled_fraction:.0%} labels, T={args.temperature}, alpha={args.alpha}; test accuracy")
    print(f"  {'seed':>6}  {'teacher':>8}  {'scratch':>8}  {'KD':>8}  {'gap recovered':>13}")
    for r in rows + [{"seed": "mean", **mean}]:
        print(f"  {r['seed']!s:>6}  {r['teacher']:8.4f}  {r['scratch']:8.4f}  {r['kd']:8.4f}  {r['recovered']:13.1%}")
    print(json.dumps({"machine": probe().to_json(), "benchmark": "distill_gap", "labeled_fraction": args.labeled_fraction, "temperature": args.temperature,
                      "alpha": args.alpha, "seeds": args.seeds, "per_seed": [{k: round(v, 4) if isinstance(v, float) else v
                                                                             for k, v in r.items()} for r in rows],
                      **{f"mean_{k}": round(v, 4) for k, v in mean.items()}, "goal_recovered": 0.85,
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()

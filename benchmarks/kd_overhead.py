"""Time per KD training step: slimtorch's distill stage against a hand-written PyTorch KD loop.

Same teacher (64-1200-1200-10), student (64-32-10), data (digits), batch size, optimiser (AdamW + cosine)
and loss (λ·CE + (1−λ)·T²·KL). Step time is the median interval between consecutive optimizer steps
within an epoch (validation and checkpoints at epoch ends are reported separately). Rounds alternate
between the two so machine load hits both alike. Goal: slimtorch / hand ≤ 1.10.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.nn import functional as F

from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.distill import DistillConfig, DistillStage
from slimtorch.measure.machine import probe
from slimtorch.models import build_model

T, ALPHA, LR, BATCH = 2.0, 0.5, 1e-3, 64


def hand_written(teacher: torch.nn.Module, student: torch.nn.Module, dataset, epochs: int) -> list[float]:
    """The loop a PyTorch user would write; returns per-step times (s), epoch-boundary steps excluded."""
    items = [dataset[i] for i in range(len(dataset))]  # labeled + transfer (label -1) examples as two tensors
    dataset = torch.utils.data.TensorDataset(torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=1e-4)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    teacher.eval()
    times = []
    for _ in range(epochs):
        student.train()
        last = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            with torch.no_grad():
                soft = F.softmax(teacher(x) / T, dim=-1)
            logits = student(x)
            labeled = y >= 0
            ce = F.cross_entropy(logits, y.clamp(min=0), reduction="none") * labeled
            kl = F.kl_div(F.log_softmax(logits / T, dim=-1), soft, reduction="none").sum(-1)
            loss = (ALPHA * ce + (1 - ALPHA) * T * T * kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss.item()
            now = time.perf_counter()
            if i > 0:
                times.append(now - last)
            last = now
    return times


class StepClock:
    """A ``ctx.progress`` that timestamps each optimizer step (fit calls ``advance(1, loss=...)`` per step)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    @contextmanager
    def __call__(self, description: str, total: int) -> Iterator:
        def advance(n: int = 1, **fields: float) -> None:
            if n == 1 and fields:
                self.stamps.append(time.perf_counter())

        yield advance

    def step_times(self, steps_per_epoch: int) -> list[float]:
        gaps = []
        for epoch_start in range(0, len(self.stamps), steps_per_epoch):
            chunk = self.stamps[epoch_start : epoch_start + steps_per_epoch]
            gaps += [b - a for a, b in itertools.pairwise(chunk)]
        return gaps


def slimtorch_run(teacher: torch.nn.Module, student: torch.nn.Module, data, epochs: int, cache: bool, tmp: Path) -> tuple[list[float], float]:
    clock = StepClock()
    cfg = DistillConfig(temperature=T, alpha=ALPHA, epochs=epochs, lr=LR, cache_teacher=cache)
    start = time.perf_counter()
    DistillStage(cfg).apply(student, RunContext(data=data, teacher=teacher, work_dir=tmp, progress=clock))
    wall = time.perf_counter() - start
    steps_per_epoch = math.ceil(len(data.distill_set()) / BATCH)
    return clock.step_times(steps_per_epoch), wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="1 thread: steadier timings on a shared CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = build_data("digits", seed=0, labeled_fraction=0.1, batch_size=BATCH)
    torch.manual_seed(0)
    teacher = build_model("mlp", {"hidden": [1200, 1200]}, input_shape=data.input_shape, num_classes=10).eval()
    make_student = lambda: build_model("mlp", {"hidden": [32]}, input_shape=data.input_shape, num_classes=10)
    hand, ours, ours_cached, walls = [], [], [], {"live": [], "cached": []}
    hand_walls = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for first in ((True, False) if r % 2 == 0 else (False, True)):  # alternate who goes first
                if first:
                    start = time.perf_counter()
                    hand += hand_written(teacher, make_student(), data.distill_set(), args.epochs)
                    hand_walls.append(time.perf_counter() - start)
                else:
                    times, wall = slimtorch_run(teacher, make_student(), data, args.epochs, False, Path(tmp) / f"live{r}")
                    ours += times
                    walls["live"].append(wall)
            times, wall = slimtorch_run(teacher, make_student(), data, args.epochs, True, Path(tmp) / f"cached{r}")
            ours_cached += times
            walls["cached"].append(wall)
    med = {k: statistics.median(v) * 1e3 for k, v in (("hand", hand), ("slimtorch", ours), ("slimtorch_cached", ours_cached))}
    ratio = med["slimtorch"] / med["hand"]
    print(f"KD step time on digits (teacher 64-1200-1200-10, student 64-32-10, batch {BATCH}), median over "
          f"{len(hand)} / {len(ours)} steps")
    print(f"  hand-written PyTorch loop          {med['hand']:7.3f} ms/step   (wall {statistics.median(hand_walls):.2f} s per run)")
    print(f"  slimtorch distill (live teacher)   {med['slimtorch']:7.3f} ms/step   (wall {statistics.median(walls['live']):.2f} s per run, "
          "incl. per-epoch validation + checkpoints)")
    print(f"  slimtorch distill (cached teacher) {med['slimtorch_cached']:7.3f} ms/step   (wall {statistics.median(walls['cached']):.2f} s per run)")
    print(f"  ratio slimtorch / hand = {ratio:.3f} (goal <= 1.10); cached / hand = {med['slimtorch_cached'] / med['hand']:.3f}")
    print(json.dumps({"machine": probe().to_json(), "benchmark": "kd_overhead", "step_ms": {k: round(v, 4) for k, v in med.items()},
                      "ratio": round(ratio, 4), "ratio_cached": round(med["slimtorch_cached"] / med["hand"], 4), "goal_ratio": 1.10,
                      "wall_s": {"hand": round(statistics.median(hand_walls), 3),
                                 **{k: round(statistics.median(v), 3) for k, v in walls.items()}},
                      "steps_measured": {"hand": len(hand), "slimtorch": len(ours)}}))


if __name__ == "__main__":
    main()

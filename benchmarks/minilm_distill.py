"""MiniLM-L6 → 3-layer student by embedding distillation on offline English sentences.

Measured in one run: cosine similarity of the student's sentence embeddings to the teacher's on held-out
sentences (before and after distillation) and the latency ratio student / teacher (torch, CPU).
Run from the project root: ``python benchmarks/minilm_distill.py [--sentences 3000 --epochs 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from torch.nn import functional as F

from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.distill import DistillConfig, DistillStage, derive_student
from slimtorch.measure.accuracy import predict
from slimtorch.measure.machine import probe
from slimtorch.models import build_model


def cosines(model: torch.nn.Module, reference: torch.Tensor, loader) -> torch.Tensor:
    out, _ = predict(model, loader)
    return F.cosine_similarity(out, reference, dim=-1)


@torch.no_grad()
def latency_ms(models: dict[str, torch.nn.Module], batch: dict[str, torch.Tensor], repeats: int) -> dict[str, list[float]]:
    """Interleaved timings (model A, model B, A, B, ...) so machine load hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        for _ in range(5):
            model(**batch)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(**batch)
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = build_data("text", args={"max_sentences": args.sentences, "max_length": 32}, batch_size=32)
    teacher = build_model("hf:minilm", {"kind": "encoder"})
    student = derive_student(teacher, width=1.0, depth=0.5)
    test = data.loader("test")
    reference, _ = predict(teacher, test)
    before = cosines(student, reference, test)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DistillConfig(loss="cosine", epochs=args.epochs, lr=args.lr)
        student, record = DistillStage(cfg).apply(student, RunContext(data=data, teacher=teacher, work_dir=Path(tmp), task="embedding"))
    train_s = time.perf_counter() - start
    after = cosines(student, reference, test)
    timings = {bs: latency_ms({"teacher": teacher, "student": student}, data.example_batch(bs, "test"), 30) for bs in (1, 8)}
    med = {bs: {k: statistics.median(v) for k, v in t.items()} for bs, t in timings.items()}
    n_t, n_s = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))
    rows = [
        ("sentences train / val / test", f"{len(data.train)} / {len(data.val)} / {len(data.test)}"),
        ("params teacher / student", f"{n_t / 1e6:.2f} M / {n_s / 1e6:.2f} M"),
        ("cosine to teacher, untuned 3-layer", f"{before.mean():.4f} (p10 {before.quantile(0.1):.4f})"),
        ("cosine to teacher, distilled", f"{after.mean():.4f} (p10 {after.quantile(0.1):.4f})"),
        ("distillation wall time", f"{train_s:.1f} s ({args.epochs} epochs)"),
    ] + [(f"latency b{bs} teacher / student (median ms)", f"{m['teacher']:.2f} / {m['student']:.2f} = {m['student'] / m['teacher']:.2f}x")
         for bs, m in med.items()]
    width = max(len(r[0]) for r in rows)
    print("MiniLM-L6 -> 3 layers (every other layer, DistilBERT init), cosine embedding KD on the fortune corpus")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(json.dumps({"machine": probe().to_json(), 
        "benchmark": "minilm_distill", "sentences_train": len(data.train), "sentences_test": len(data.test),
        "teacher_params": n_t, "student_params": n_s, "cosine_before": round(before.mean().item(), 4),
        "cosine_after": round(after.mean().item(), 4), "cosine_after_p10": round(after.quantile(0.1).item(), 4),
        "epochs": args.epochs, "train_seconds": round(train_s, 1),
        "latency_ms": {str(bs): {k: round(v, 3) for k, v in m.items()} for bs, m in med.items()},
        "latency_ratio": {str(bs): round(m["student"] / m["teacher"], 3) for bs, m in med.items()},
        "val_history": record.details["hops"][0]["history"],
    }))


if __name__ == "__main__":
    main()

"""Run by tests/distill/test_ddp.py under ``torchrun --nproc_per_node 2``: the stage trains with DDP in place."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F

from slimtorch.core import RunContext, forward, seed_everything
from slimtorch.data import build_data
from slimtorch.distill import DistillConfig, DistillStage
from slimtorch.measure.accuracy import accuracy_of, predict
from slimtorch.models import build_model
from slimtorch.train import TrainConfig, fit


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    data = build_data("digits", seed=0)
    seed_everything(0)
    teacher = build_model("mlp", {"hidden": [256]}, input_shape=data.input_shape, num_classes=10)
    # Every rank trains the same teacher without DDP (no process group use inside): identical weights.
    fit(teacher, lambda m, x, y: F.cross_entropy(forward(m, x), y), data.loader("train", shuffle=True),
        TrainConfig(epochs=6, lr=2e-3), RunContext(data=data, work_dir=out / f"t{dist.get_rank()}"))
    seed_everything(0)
    student = build_model("mlp", {"hidden": [32]}, input_shape=data.input_shape, num_classes=10)
    model, record = DistillStage(DistillConfig(epochs=8, lr=1e-2)).apply(
        student, RunContext(data=data, teacher=teacher, work_dir=out / "run"))
    acc = accuracy_of(*predict(model, data.loader("test")))
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps({"accuracy": acc, "world_size": record.details["hops"][0]["world_size"],
                                                     "weights_sum": float(sum(p.sum() for p in model.parameters()))}))
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

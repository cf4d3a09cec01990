"""Han et al. (2015)-style magnitude pruning of an MLP on digits, and a lottery ticket at 20 % weights.

1. Train a 64-1200-1200-10 MLP; prune 92 % of its hidden weights (the classifier stays dense) (global magnitude, cubic schedule with
   fine-tuning between steps). Goal: >= 10x fewer nonzero weights, <= 0.5 point accuracy drop.
2. Lottery ticket (Frankle & Carbin), LeNet-300-100-shaped MLP: iterative magnitude pruning to 20 % of the weights with rewinding
   to epoch 1; compared with the dense network and with the same mask from a random re-initialisation.
   Goal: ticket within 0.5 point of dense; the re-init control clearly worse.

Run from the project root: .venv/bin/python benchmarks/prune_mlp.py
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch
from torch.nn import functional as F

from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.measure.accuracy import task_metric
from slimtorch.measure.machine import probe
from slimtorch.measure.params import count_nonzero, count_params
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.train.loop import TrainConfig, fit

torch.set_num_threads(2)


def weights_nonzero(model: torch.nn.Module) -> tuple[int, int]:
    """(weights, nonzero weights) of every Linear (biases excluded, as Han et al. count)."""
    total = nz = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            total, nz = total + m.weight.numel(), nz + int((m.weight != 0).sum())
    return total, nz


def main() -> None:
    data = build_data("digits", seed=0, batch_size=64)
    work = Path(tempfile.mkdtemp(prefix="prune_mlp_"))
    ctx = RunContext(data=data, seed=0, work_dir=work)
    torch.manual_seed(0)
    dense = build_model("mlp", {"hidden": [1200, 1200]}, input_shape=data.input_shape, num_classes=10)
    fit(dense, lambda m, x, y: F.cross_entropy(m(x), y), data.loader("train", shuffle=True), TrainConfig(epochs=30, lr=1e-3), ctx,
        evaluate=lambda m: task_metric(m, data, "val"))
    dense_acc = task_metric(dense, data, "test")
    cfg = PruneConfig(sparsity=0.92, granularity="weight", criterion="magnitude", scope="global", schedule="cubic",
                      steps=3, finetune_epochs=8, lr=1e-3)
    pruned, _record = PruneStage(cfg).apply(copy.deepcopy(dense), ctx)
    pruned_acc = task_metric(pruned, data, "test")
    w_total, w_nz = weights_nonzero(pruned)
    han = {"dense_acc": round(dense_acc, 4), "pruned_acc": round(pruned_acc, 4), "drop_points": round(100 * (dense_acc - pruned_acc), 2),
           "weights": w_total, "nonzero_weights": w_nz, "weight_reduction": round(w_total / w_nz, 2),
           "params_incl_bias_reduction": round(count_params(dense) / count_nonzero(pruned), 2)}

    lot_cfg = PruneConfig(sparsity=0.8, scope="global",
                          lottery={"iterations": 3, "epochs": 25, "rewind_epoch": 1, "lr": 3e-3, "control": True})
    lenet = build_model("mlp", {"hidden": [300, 100]}, input_shape=data.input_shape, num_classes=10)
    ticket, lot_record = PruneStage(lot_cfg).apply(lenet, RunContext(data=data, seed=0, work_dir=work / "lottery"))
    lot = lot_record.details["lottery"]
    t_total, t_nz = weights_nonzero(ticket)
    lottery = {"dense_acc": round(lot["dense_test"], 4), "ticket_acc": round(lot["ticket_test"], 4),
               "random_reinit_acc": round(lot["random_reinit_test"], 4), "weights_kept": round(t_nz / t_total, 4),
               "rounds": lot["rounds"]}

    print("Han et al.-style pruning, MLP 64-1200-1200-10 on digits (test split, 360 images)")
    print(f"  dense {han['dense_acc']:.4f}  pruned {han['pruned_acc']:.4f}  drop {han['drop_points']:.2f} points")
    print(f"  nonzero weights {w_nz}/{w_total}: {han['weight_reduction']:.1f}x fewer (goal >= 10x, drop <= 0.5)")
    print(f"Lottery ticket, MLP 64-300-100-10, at {100 * lottery['weights_kept']:.1f}% of weights (rewind to epoch 1, 3 rounds)")
    print(f"  dense {lottery['dense_acc']:.4f}  ticket {lottery['ticket_acc']:.4f}  random re-init {lottery['random_reinit_acc']:.4f}")
    print(json.dumps({"machine": probe().to_json(), "benchmark": "prune_mlp", "han": han, "lottery": lottery}))


if __name__ == "__main__":
    main()

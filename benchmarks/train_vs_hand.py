"""slimtorch's training stages against a plain hand-written PyTorch loop (Adam, constant lr 1e-3), same seeds.

Three digits experiments, each on the same trained teacher / dense model, data and student initialisation:

1. Scenario 2 (Hinton KD): 10 % of the labels + the other 90 % as an unlabeled transfer set, T = 2,
   alpha = 0.5, 32-unit MLP student. Gap recovered = (KD − scratch) / (teacher − scratch) on the test split;
   scratch is the better of two label-only students (hand loop and slimtorch, each on the 10 %).
2. Hinton's omitted class: the student's data has no 3 at all (train and val), T = 20, alpha = 0, 64-unit
   student; the figure is the fraction of the test 3s it gets right.
3. Han-style: a trained 64-300-100-10 MLP (trained by the hand loop, 60 epochs, as is the teacher of 1 and 2), global magnitude pruning of the hidden weights in 3 iterative
   steps with fine-tuning after each (classifier dense), to >= 10x fewer nonzero parameters in the whole
   model; the figure is the accuracy change in points.

slimtorch runs each with its stage API and only the experiment's settings (temperature, alpha, sparsity,
epochs), so its defaults decide the rest (distill: ``lr: auto``; prune recovery: lr 1e-3): once with the hand
loop's epoch count, once with a generous ``epochs`` ceiling (it stops by itself once converged); and, for
distillation, at the ceiling with the hand loop's fixed lr 1e-3. Run from the project root:
``python benchmarks/train_vs_hand.py [--seeds 0 1 2]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Subset

from slimtorch.core import RunContext, seed_everything
from slimtorch.data import DataBundle, build_data
from slimtorch.distill import DistillConfig, DistillStage
from slimtorch.measure.accuracy import predict
from slimtorch.measure.machine import probe
from slimtorch.measure.params import count_nonzero, count_params
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.prune.schedule import sparsity_schedule
from slimtorch.train import FinetuneConfig, FinetuneStage

OMITTED = 3


def variants(epochs: int, ceiling: int) -> list[tuple[str, int, float | None]]:
    """slimtorch runs with the stage's defaults (distill: ``lr: auto``) at the hand loop's epochs and at a generous
    ceiling, and at the ceiling with the hand loop's fixed lr 1e-3."""
    return [("slim", epochs, None), ("slim_ceiling", ceiling, None), ("slim_lr1e-3", ceiling, 1e-3)]


# ---------------------------------------------------------------- the hand loop: Adam, constant lr, last epoch kept
def hand_train(model: nn.Module, dataset, loss_fn, epochs: int, seed: int, masks: dict | None = None) -> nn.Module:
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = loss_fn(model, x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if masks:
                with torch.no_grad():
                    for p, m in masks.items():
                        p.mul_(m)
    return model.eval()


def hand_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    keep = y >= 0
    return F.cross_entropy(model(x)[keep], y[keep])


def hand_kd(teacher: nn.Module, temperature: float, alpha: float):
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        s = model(x)
        soft = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
        keep = y >= 0
        ce = F.cross_entropy(s[keep], y[keep]) if alpha > 0 and keep.any() else s.sum() * 0
        return alpha * ce + (1 - alpha) * temperature**2 * soft
    return loss


# ---------------------------------------------------------------- shared pieces
def acc(model: nn.Module, data: DataBundle, split: str = "test", only: int | None = None) -> float:
    logits, y = predict(model, data.loader(split))
    pred = logits.argmax(-1)
    keep = y == only if only is not None else torch.ones_like(y, dtype=torch.bool)
    return float((pred[keep] == y[keep]).float().mean())


def mlp(data: DataBundle, hidden: list[int], seed: int, **kw) -> nn.Module:
    seed_everything(seed)
    return build_model("mlp", {"hidden": hidden, **kw}, input_shape=data.input_shape, num_classes=10)


def teacher_for(data: DataBundle, seed: int) -> nn.Module:
    """The teacher (and Han's dense model) come from the hand loop, so both sides start from the same model."""
    return hand_train(mlp(data, [1200, 1200], seed, dropout=0.2), data.train, hand_ce, 60, seed)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ---------------------------------------------------------------- 1. scenario 2
def scenario2(seed: int, teacher: nn.Module, full: DataBundle, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    part = build_data("digits", seed=seed, labeled_fraction=0.1)
    T, alpha = 2.0, 0.5
    out = {"teacher": acc(teacher, full)}
    scratch_hand = hand_train(mlp(part, [32], seed), part.train, hand_ce, args.scratch_epochs, seed)
    scratch_slim, _ = FinetuneStage(FinetuneConfig(epochs=args.scratch_epochs)).apply(
        mlp(part, [32], seed), RunContext(data=part, seed=seed, work_dir=tmp / "scratch"))
    out["scratch"] = max(acc(scratch_hand, full), acc(scratch_slim, full))
    out["hand"], out["hand_s"] = timed(lambda: acc(hand_train(mlp(part, [32], seed), part.distill_set(), hand_kd(teacher, T, alpha),
                                                               args.kd_epochs, seed), full))
    out["hand_epochs"] = args.kd_epochs
    for tag, epochs, lr in variants(args.kd_epochs, args.kd_ceiling):
        ctx = RunContext(data=part, teacher=teacher, seed=seed, work_dir=tmp / tag)
        cfg = DistillConfig(temperature=T, alpha=alpha, epochs=epochs, lr=lr)
        (student, record), out[f"{tag}_s"] = timed(partial(DistillStage(cfg).apply, mlp(part, [32], seed), ctx))
        out[tag], out[f"{tag}_epochs"] = acc(student, full), record.details["hops"][-1]["epochs_run"]
    for tag in ("hand", "slim", "slim_ceiling", "slim_lr1e-3"):
        out[f"{tag}_recovered"] = (out[tag] - out["scratch"]) / (out["teacher"] - out["scratch"])
    return out


# ---------------------------------------------------------------- 2. omitted class
def without(dataset, label: int) -> Subset:
    return Subset(dataset, [i for i in range(len(dataset)) if int(dataset[i][1]) != label])


def omitted(seed: int, teacher: nn.Module, full: DataBundle, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    data = DataBundle(name="digits-no3", train=without(full.train, OMITTED), val=without(full.val, OMITTED), test=full.test,
                      num_classes=10, input_shape=full.input_shape, batch_size=64)
    T, alpha = 20.0, 0.0
    out = {"teacher": acc(teacher, full, only=OMITTED)}
    student, out["hand_s"] = timed(lambda: hand_train(mlp(data, [64], seed), data.train, hand_kd(teacher, T, alpha), args.omit_epochs, seed))
    out["hand"], out["hand_all"], out["hand_epochs"] = acc(student, full, only=OMITTED), acc(student, full), args.omit_epochs
    for tag, epochs, lr in variants(args.omit_epochs, args.omit_ceiling):
        ctx = RunContext(data=data, teacher=teacher, seed=seed, work_dir=tmp / f"omit_{tag}")
        cfg = DistillConfig(temperature=T, alpha=alpha, epochs=epochs, lr=lr)
        (student, record), out[f"{tag}_s"] = timed(partial(DistillStage(cfg).apply, mlp(data, [64], seed), ctx))
        out[tag], out[f"{tag}_all"] = acc(student, full, only=OMITTED), acc(student, full)
        out[f"{tag}_epochs"] = record.details["hops"][-1]["epochs_run"]
    return out


# ---------------------------------------------------------------- 3. Han-style pruning
def hand_prune(dense: nn.Module, data: DataBundle, sparsity: float, steps: int, epochs: int, seed: int) -> nn.Module:
    model = copy.deepcopy(dense)
    hidden = [m.weight for m in model.modules() if isinstance(m, nn.Linear)][:-1]  # the classifier stays dense
    masks: dict = {}
    for s in sparsity_schedule("iterative", sparsity, steps):
        scores = torch.cat([w.detach().abs().flatten() for w in hidden])
        threshold = scores.kthvalue(max(1, round(s * scores.numel()))).values
        masks = {w: (w.detach().abs() > threshold).float() for w in hidden}
        with torch.no_grad():
            for w, m in masks.items():
                w.mul_(m)
        hand_train(model, data.train, hand_ce, epochs, seed, masks)
    return model


def han(seed: int, data: DataBundle, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    dense = hand_train(mlp(data, [300, 100], seed), data.train, hand_ce, 60, seed)
    out = {"dense": acc(dense, data)}
    params = count_params(dense)
    pruned, out["hand_s"] = timed(lambda: hand_prune(dense, data, args.sparsity, 3, args.prune_epochs, seed))
    out["hand"], out["hand_reduction"] = acc(pruned, data) - out["dense"], params / count_nonzero(pruned)
    out["hand_epochs"] = 3 * args.prune_epochs
    for tag, epochs, lr in variants(args.prune_epochs, args.prune_ceiling):
        if lr is not None:
            continue  # PruneConfig.lr defaults to 1e-3 already
        cfg = PruneConfig(sparsity=args.sparsity, granularity="weight", criterion="magnitude", scope="global", schedule="iterative",
                          steps=3, finetune_epochs=epochs)
        ctx = RunContext(data=data, seed=seed, work_dir=tmp / f"prune_{tag}")
        (pruned, record), out[f"{tag}_s"] = timed(partial(PruneStage(cfg).apply, copy.deepcopy(dense), ctx))
        out[tag], out[f"{tag}_reduction"] = acc(pruned, data) - out["dense"], params / count_nonzero(pruned)
        out[f"{tag}_epochs"] = sum(h.get("epochs_run", 0) for h in record.details["schedule"])
    return out


def mean(rows: list[dict[str, float]], key: str) -> float:
    return statistics.mean(r[key] for r in rows)


def _f(digits: int, scale: float = 1.0, sign: str = "", unit: str = ""):
    return lambda v: f"{scale * v:{sign}.{digits}f}{unit}"


TABLE = {
    "scenario2": lambda a, r: [
        (f"scenario 2 (T 2, alpha 0.5, {a.kd_epochs} / {a.kd_ceiling} ep.)", "test accuracy", "", _f(4)),
        (f"  teacher {mean(r, 'teacher'):.4f}, scratch {mean(r, 'scratch'):.4f}", "gap recovered (goal 0.85)", "_recovered", _f(3)),
        ("", "epochs run", "_epochs", _f(0)), ("", "seconds", "_s", _f(1))],
    "omitted": lambda a, r: [
        (f"omitted 3 (T 20, alpha 0, {a.omit_epochs} / {a.omit_ceiling} ep.)", "3s right (goal 0.85)", "", _f(3)),
        (f"  the teacher gets {mean(r, 'teacher'):.3f} of the 3s", "test accuracy, all digits", "_all", _f(4)),
        ("", "epochs run", "_epochs", _f(0)), ("", "seconds", "_s", _f(1))],
    "han": lambda a, r: [
        (f"Han 300-100, {100 * a.sparsity:.0f} % of hidden weights, 3 steps", "accuracy change, points", "", _f(2, 100, "+")),
        (f"  dense {mean(r, 'dense'):.4f}; {a.prune_epochs} / {a.prune_ceiling} ep. per step", "fewer nonzeros, whole model",
         "_reduction", _f(2, unit="x")),
        ("", "epochs run (3 steps)", "_epochs", _f(0)), ("", "seconds", "_s", _f(1))],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kd-epochs", type=int, default=60)
    parser.add_argument("--kd-ceiling", type=int, default=300)
    parser.add_argument("--scratch-epochs", type=int, default=400, help="the labeled 10 %% is 3 batches per epoch")
    parser.add_argument("--omit-epochs", type=int, default=80)
    parser.add_argument("--omit-ceiling", type=int, default=400)
    parser.add_argument("--sparsity", type=float, default=0.93, help="of the hidden weights; 0.93 gives >= 10x in the whole model")
    parser.add_argument("--prune-epochs", type=int, default=20, help="fine-tuning epochs after each of the 3 pruning steps")
    parser.add_argument("--prune-ceiling", type=int, default=60)
    parser.add_argument("--only", choices=["scenario2", "omitted", "han"], nargs="+", default=["scenario2", "omitted", "han"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in args.only}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            work = Path(tmp) / str(seed)
            full = build_data("digits", seed=seed)
            if "han" in rows:
                rows["han"].append(han(seed, full, args, work))
            if "scenario2" in rows or "omitted" in rows:
                teacher = teacher_for(full, seed)
                if "scenario2" in rows:
                    rows["scenario2"].append(scenario2(seed, teacher, full, args, work))
                if "omitted" in rows:
                    rows["omitted"].append(omitted(seed, teacher, full, args, work))
    result: dict[str, object] = {"benchmark": "train_vs_hand", "seeds": args.seeds, "threads": args.threads}
    print(f"slimtorch vs a hand loop (Adam, constant lr 1e-3), digits, mean of seeds {args.seeds}")
    print(f"  {'experiment':<46} {'figure':<28} {'hand':>9} {'slimtorch':>10} {'slimtorch':>10} {'slimtorch':>10}")
    print(f"  {'':<46} {'':<28} {'':>9} {'same ep.':>10} {'ceiling':>10} {'lr 1e-3':>10}")
    for name, r in rows.items():
        result[name] = {k: round(mean(r, k), 4) for k in r[0]}
        for label, figure, suffix, fmt in TABLE[name](args, r):
            cells = [fmt(mean(r, f"{tag}{suffix}")) if f"{tag}{suffix}" in r[0] else "—" for tag in ("hand", "slim", "slim_ceiling", "slim_lr1e-3")]
            print(f"  {label:<46} {figure:<28} {cells[0]:>9} {cells[1]:>10} {cells[2]:>10} {cells[3]:>10}")
    if "scenario2" in rows:
        result["scenario2"]["per_seed_slim_ceiling_recovered"] = [round(x["slim_ceiling_recovered"], 4) for x in rows["scenario2"]]
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps({"machine": probe().to_json(), **result}))


if __name__ == "__main__":
    main()

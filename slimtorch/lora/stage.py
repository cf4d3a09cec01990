"""The ``lora`` stage: attach LoRA → train (distilling from the teacher when there is one) → merge.

Records the trained-parameter count and the metric recovered, next to a full fine-tune with the same
step budget (``record.details["full_finetune"]``; that model is reported as an extra model).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from slimtorch.core import RunContext, Stage, StageRecord, forward
from slimtorch.distill.losses import recovery_loss
from slimtorch.errors import DataError
from slimtorch.export.onnx import bake_parametrizations_
from slimtorch.lora import _peft
from slimtorch.lora.config import LoraConfig
from slimtorch.measure.accuracy import task_metric
from slimtorch.models.attrs import set_attrs_
from slimtorch.prune.masks import masks_from_zeros, rearm_masks_
from slimtorch.train.loop import TrainConfig, convergence_note, fit


def make_loss(cfg: LoraConfig, ctx: RunContext) -> tuple[Any, str]:
    """``loss_fn(model, x, y)`` and a short description of what it optimises."""
    teacher = ctx.teacher if cfg.use_teacher else None
    if teacher is None:
        if ctx.data.task != "classification":
            raise DataError("lora on an embedding task needs a teacher to match (no labels to train on); "
                            "give the recipe a teacher or set lora.use_teacher: true.")
        return recovery_loss(None, ctx.data.task, cfg.temperature, cfg.alpha), "cross-entropy on labels"
    teacher.eval()
    T = cfg.temperature
    kind = "1 − cosine to the teacher" if ctx.data.task != "classification" else f"distillation from the teacher (T={T})"
    return recovery_loss(teacher, ctx.data.task, T, cfg.alpha), kind


class LoraStage(Stage[LoraConfig], kind="lora"):
    """LoRA recovery with peft; returns the merged plain model."""

    def _metric(self, model: nn.Module, ctx: RunContext) -> float:
        return task_metric(model, ctx.data, "val", reference=ctx.teacher)

    def _train(self, model: nn.Module, ctx: RunContext, lr: float, tag: str, loss_fn: Any) -> dict[str, Any]:
        cfg = self.config
        dataset = ctx.data.distill_set() if (ctx.teacher is not None and cfg.use_teacher) else ctx.data.train
        loader = ctx.data.loader(dataset, batch_size=cfg.batch_size, shuffle=True, seed=ctx.seed)
        train_cfg = TrainConfig(epochs=cfg.epochs, lr=lr, max_steps=cfg.max_steps, weight_decay=0.0)
        start = time.perf_counter()
        result = fit(model, loss_fn, loader, train_cfg, ctx, evaluate=lambda m: self._metric(m, ctx),
                     checkpoint_dir=ctx.stage_dir(self.name) / tag, description=f"lora: {tag}")
        return {**result.summary(), "train_s": round(time.perf_counter() - start, 2),
                "convergence_note": convergence_note(result, f"lora ({tag})", train_cfg.min_loss_improvement)}

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        cfg = self.config
        loss_fn, objective = make_loss(cfg, ctx)
        before = self._metric(model, ctx)
        masks = masks_from_zeros(model)
        work = bake_parametrizations_(copy.deepcopy(model))
        targets = _peft.resolve_targets(work, cfg.target_modules)
        total = sum(p.numel() for p in work.parameters())
        # only pruned Linear targets get masked LoRA updates while training; other pruned layers train dense
        in_training = [f for f in masks if f in targets and isinstance(work.get_submodule(f), nn.Linear)]
        adapted = _peft.attach_lora_(work, targets, cfg.rank, cfg.lora_alpha, cfg.dropout, masks if cfg.keep_sparsity else None)
        n_trainable = _peft.trainable_params(adapted)
        lora_run = self._train(adapted, ctx, cfg.lr, "adapters", loss_fn)
        adapted.eval()
        check = ctx.data.example_batch(16)
        with torch.no_grad():
            adapter_out = forward(adapted, check)
        merged = _peft.merge_lora_(adapted)
        with torch.no_grad():
            merge_diff = (forward(merged, check) - adapter_out).abs().max().item()
        notes = [lora_run["convergence_note"]] if lora_run["convergence_note"] else []
        dense_after = self._metric(merged, ctx) if masks else None
        if masks and cfg.keep_sparsity:
            rearm_masks_(merged, masks)
            notes.append(f"the LoRA updates of {len(in_training)} pruned Linear layers were masked like their weights while "
                         f"training; {len(masks) - len(in_training)} other pruned layers were re-masked after merging. The "
                         "merged model keeps its sparsity; the masks are re-applied as parametrizations.")
        elif masks:
            notes.append("lora.keep_sparsity is false: the merged model is dense again.")
        set_attrs_(merged, slimtorch_spec=getattr(model, "slimtorch_spec", None))
        after = self._metric(merged, ctx)
        teacher_metric = self._metric(ctx.teacher, ctx) if ctx.teacher is not None else None
        details: dict[str, Any] = {
            "backend": f"peft {_peft._peft().__version__} LoRA", "objective": objective, "target_modules": targets,
            "trainable_params": n_trainable, "total_params": total, "trainable_fraction": round(n_trainable / total, 5),
            "metric_before": before, "metric_after": after, "metric_recovered": after - before,
            "metric_after_before_remasking": dense_after, "teacher_metric": teacher_metric, "merge_max_abs_diff": merge_diff, **lora_run,
        }
        if teacher_metric is not None and teacher_metric > before:
            details["fraction_of_gap_recovered"] = (after - before) / (teacher_metric - before)
        record = self.record(notes=notes, details=details)
        if cfg.compare_full_finetune:
            full = copy.deepcopy(model)
            for p in full.parameters():
                p.requires_grad_(True)
            full_run = self._train(full, ctx, cfg.full_finetune_lr, "full_finetune", loss_fn)
            full_after = self._metric(full, ctx)
            record.details["full_finetune"] = {"trainable_params": _peft.trainable_params(full), "lr": cfg.full_finetune_lr,
                                               "metric_after": full_after, "metric_recovered": full_after - before, **full_run}
            record.extra_models.append(("full_finetune", full))
        return merged, record

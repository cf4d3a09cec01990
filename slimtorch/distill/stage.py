"""The ``distill`` stage: teachers (optionally through a teaching assistant) → the current model."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from slimtorch.core import RunContext, Stage, StageRecord
from slimtorch.data.bundle import dataset_len
from slimtorch.distill.config import DistillConfig, FeatureSpec, TransformerFeatures
from slimtorch.distill.ddp import job_for, single_process, spawn_hop
from slimtorch.distill.engine import train_hop
from slimtorch.distill.layers import transformer_pairs
from slimtorch.distill.token_hop import train_token_hop
from slimtorch.distributed import world_size
from slimtorch.errors import RecipeError
from slimtorch.measure.accuracy import task_metric
from slimtorch.models import build_model
from slimtorch.models.hf import causal_lm_inner
from slimtorch.train.config import FinetuneConfig
from slimtorch.train.loop import convergence_note, fit, train_fields
from slimtorch.train.losses import cross_entropy

log = logging.getLogger(__name__)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def teachers_of(ctx: RunContext) -> list[nn.Module]:
    """``ctx.teachers`` (first = ``ctx.teacher``) or ``[ctx.teacher]``."""
    teachers = list(ctx.teachers or ([] if ctx.teacher is None else [ctx.teacher]))
    if not teachers:
        raise RecipeError(
            "distill needs a trained teacher: give the recipe a `teacher:` entry (or set RunContext.teacher). "
            "With no teacher, use `finetune` to train on labels instead."
        )
    return teachers


def _weights(config: DistillConfig, n: int) -> list[float]:
    if config.teacher_weights is None:
        return [1.0] * n
    if len(config.teacher_weights) != n:
        raise RecipeError(
            f"distill.teacher_weights has {len(config.teacher_weights)} entries but the run has {n} teacher(s); "
            "give one weight per teacher, in the order of the recipe's `teacher:` list."
        )
    return list(config.teacher_weights)


def _check_task(config: DistillConfig, task: str) -> None:
    if task == "embedding" and config.loss == "kd":
        raise RecipeError(
            "distill.loss 'kd' needs class logits, but this data's task is 'embedding'. "
            "Use loss: cosine (or mse) to match the teacher's embeddings."
        )


class DistillStage(Stage[DistillConfig], kind="distill"):
    """Knowledge distillation into the current model; see :class:`DistillConfig` for the loss.

    Example:
        >>> stage = DistillStage(DistillConfig(temperature=2.0, alpha=0.5, epochs=20))  # doctest: +SKIP
        >>> student, record = stage.apply(student, RunContext(data=data, teacher=teacher))  # doctest: +SKIP
    """

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        config, data = self.config, ctx.data
        if causal_lm_inner(model) is not None:
            return self._apply_tokens(model, ctx)
        _check_task(config, data.task)
        if config.compare_labels_only and (data.task != "classification" or config.loss != "kd"):
            raise RecipeError("distill.compare_labels_only trains a control on class labels; it needs loss: kd on a classification "
                              f"task (this run: loss {config.loss!r}, task {data.task!r}). Leave it out here.")
        start_weights = copy.deepcopy(model) if config.compare_labels_only else None
        teachers = teachers_of(ctx)
        weights = _weights(config, len(teachers))
        record = self.record()
        stage_dir = ctx.stage_dir(self.name)
        hops: list[dict[str, Any]] = []
        source, source_name = teachers, "teacher" if len(teachers) == 1 else f"{len(teachers)} teachers"
        if config.assistant is not None:
            spec = config.assistant
            assistant = build_model(spec.model, spec.args, input_shape=data.input_shape, num_classes=data.num_classes)
            hops.append(self._hop(assistant, teachers, weights, ctx, epochs=spec.epochs, pairs=(), names=(source_name, "assistant"),
                                  checkpoint_dir=stage_dir / "assistant"))
            record.extra_models.append(("assistant", assistant))
            source, weights, source_name = [assistant], [1.0], "assistant"
        pairs, layers = self._pairs(model, source[0])
        hops.append(self._hop(model, source, weights, ctx, epochs=None, pairs=pairs, names=(source_name, "student"),
                              checkpoint_dir=stage_dir / "student"))
        record.details = self._details(ctx, teachers, hops)
        if layers is not None:
            record.details["layers"] = layers
        record.notes = self._notes(ctx, hops)
        if start_weights is not None:
            record.extra_models.append(("labels_only", self._labels_only(start_weights, ctx, record)))
        return model, record

    def _labels_only(self, student: nn.Module, ctx: RunContext, record: StageRecord) -> nn.Module:
        """The control: the same student and start, trained on the labeled train split alone with the same settings."""
        config = FinetuneConfig(**train_fields(self.config))
        start = time.perf_counter()
        loader = ctx.data.loader("train", config.batch_size, shuffle=True, seed=ctx.seed)
        result = fit(student, cross_entropy, loader, config, ctx, evaluate=lambda m: task_metric(m, ctx.data, "val"),
                     checkpoint_dir=ctx.stage_dir(self.name) / "labels_only", description="labels only (control)")
        distilled = record.details["hops"][-1]["val_accuracy"]
        record.details["labels_only"] = {"val_accuracy": round(result.best_metric, 6), **result.summary(),
                                         "seconds": round(time.perf_counter() - start, 3)}
        record.notes.append(f"control without the teacher (same student, start and settings, labels only): val accuracy "
                            f"{100 * result.best_metric:.2f}% against {100 * distilled:.2f}% distilled "
                            f"({100 * (distilled - result.best_metric):+.2f} points from distillation).")
        return student

    def _apply_tokens(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        """A causal LM learns token by token from its teachers (:mod:`slimtorch.distill.token_hop`)."""
        teachers = teachers_of(ctx)
        weights = _weights(self.config, len(teachers))
        record = self.record()
        start = time.perf_counter()
        description = "distill teacher→student (tokens)"
        hop = train_token_hop(model, teachers, weights, ctx.data, self.config, ctx, description=description,
                              checkpoint_dir=ctx.stage_dir(self.name) / "student")
        summary = {**hop.fit.summary(), "val_kl_to_teacher": round(-hop.fit.best_metric, 6), "resumed_from_epoch": hop.fit.resumed_from_epoch,
                   "history": [{k: round(v, 6) for k, v in h.items()} for h in hop.fit.history],
                   "seconds": round(time.perf_counter() - start, 3)}
        record.details = {"teachers": len(teachers), "teacher_weights": weights, "teacher_params": sum(_count(t) for t in teachers),
                          "student_params": _count(model), **hop.details(), **summary}
        tied = record.details["frozen"]["tied"]
        record.notes = [f"distill.freeze froze {name}, which {alias} shares (tied weights): both stayed fixed."
                        for alias, name in tied.items()]
        note = convergence_note(hop.fit, description, self.config.min_loss_improvement)
        if note:
            record.notes.append(note)
        return model, record

    def _pairs(self, student: nn.Module, teacher: nn.Module) -> tuple[list[FeatureSpec], dict[str, Any] | None]:
        """The feature pairs of the student's hop: as written, or the transformer preset expanded for these two models."""
        features = self.config.features
        if isinstance(features, TransformerFeatures):
            expanded = transformer_pairs(features, student, teacher)
            return expanded.pairs, expanded.details()
        return list(features), None

    def _hop(self, student: nn.Module, teachers: Sequence[nn.Module], weights: list[float], ctx: RunContext, *, epochs: int | None,
             pairs: Sequence[FeatureSpec], names: tuple[str, str], checkpoint_dir: Path) -> dict[str, Any]:
        start = time.perf_counter()
        description = f"distill {names[0]}→{names[1]}"
        ddp = self.config.ddp
        if ddp is not None and ddp.world_size > 1 and world_size() == 1:  # under torchrun the run is already parallel
            job = job_for(ctx, student=student, teachers=list(teachers), weights=weights, data=ctx.data,
                          config=single_process(self.config), epochs=epochs, pairs=list(pairs), description=description,
                          checkpoint_dir=checkpoint_dir)
            summary = spawn_hop(job, ddp)
        else:
            hop = train_hop(student, teachers, weights, ctx.data, self.config, ctx, epochs=epochs, pairs=pairs,
                            description=description, checkpoint_dir=checkpoint_dir)
            summary = {"best_metric": hop.fit.best_metric, **hop.fit.summary(), "history": hop.fit.history, "cached": hop.cached,
                       "world_size": hop.world_size, "adapter_params": hop.adapter_params, "frozen_params": hop.frozen_params,
                       "teacher_cache": hop.cache,
                       "resumed_from_epoch": hop.fit.resumed_from_epoch,
                       "convergence_note": convergence_note(hop.fit, description, self.config.min_loss_improvement)}
        metric = "val_accuracy" if ctx.data.task == "classification" else "val_cosine_to_teacher"
        return {
            "from": names[0], "to": names[1], "teacher_params": sum(_count(t) for t in teachers),
            "student_params": _count(student), metric: round(summary["best_metric"], 6), "best_epoch": summary["best_epoch"],
            "epochs_run": summary["epochs_run"], "epochs_ceiling": summary.get("epochs_ceiling"),
            "converged_epoch": summary.get("converged_epoch"), "stop_reason": summary.get("stop_reason"), "lr": summary.get("lr"),
            "convergence_note": summary.get("convergence_note"), "steps": summary["steps"], "cached_teacher": summary["cached"],
            "world_size": summary["world_size"], "adapter_params": summary["adapter_params"],
            "frozen_params": summary.get("frozen_params", 0), "teacher_cache": summary.get("teacher_cache"),
            "resumed_from_epoch": summary.get("resumed_from_epoch", 0), "seconds": round(time.perf_counter() - start, 3),
            "history": [{k: round(v, 6) for k, v in h.items()} for h in summary["history"]],
        }

    def _details(self, ctx: RunContext, teachers: Sequence[nn.Module], hops: list[dict[str, Any]]) -> dict[str, Any]:
        data, config = ctx.data, self.config
        has_transfer = data.transfer is not None and config.use_transfer
        return {
            "scenario": 2 if has_transfer else 1,
            "train_labeled": dataset_len(data.train),
            "transfer_unlabeled": dataset_len(data.transfer) if has_transfer and data.transfer is not None else 0,
            "teachers": len(teachers),
            "teacher_weights": _weights(config, len(teachers)),
            "loss": config.loss,
            "temperature": config.temperature_value,
            "alpha": config.alpha_value,
            "features": config.features.model_dump() if isinstance(config.features, TransformerFeatures)
            else [p.model_dump() for p in config.features],
            "converged_epoch": hops[-1]["converged_epoch"],
            "hops": hops,
        }

    def _notes(self, ctx: RunContext, hops: list[dict[str, Any]]) -> list[str]:
        config, notes = self.config, []
        if ctx.data.task == "classification" and config.loss == "kd" and config.alpha_value == 1.0:
            notes.append("distill.alpha is 1: the student trained on labels only; the teacher's soft targets were not used.")
        if ctx.data.task == "embedding" and config.alpha is not None:
            notes.append("distill.alpha has no effect on an embedding task: there are no labels, only the teacher's embeddings.")
        if config.cache_teacher and not all(h["cached_teacher"] for h in hops):
            notes.append("teacher outputs were not cached: the data gives a different input each time it is read (augmentation).")
        notes.extend(hop["convergence_note"] for hop in hops if hop.get("convergence_note"))
        return notes

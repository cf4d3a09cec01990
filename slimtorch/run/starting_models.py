"""The models a run starts from: its teachers (built, trained or reused on resume) and its student.

Every model is built inside the recipe's resource limits (counted on the meta device first when it
can be), and seeded so that a resumed run initialises exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimtorch.core import RunContext, seed_everything
from slimtorch.data import DataBundle
from slimtorch.distill.auto_student import derive_student
from slimtorch.errors import RecipeError
from slimtorch.measure import check_model_fits_data
from slimtorch.measure.accuracy import task_metric
from slimtorch.models import build_model
from slimtorch.models.architecture import is_safe_ref
from slimtorch.models.weights import available_memory_bytes
from slimtorch.recipe import Recipe
from slimtorch.recipe.schema import ModelSpec
from slimtorch.resources import check_model_fits, model_memory_mb
from slimtorch.run.loop import Step, StepOutput, run_step
from slimtorch.run.store import RunStore
from slimtorch.train import convergence_note, cross_entropy, fit
from slimtorch.units import MB


class StartingModels:
    """Builds a recipe's teachers and student; each teacher is a :class:`~slimtorch.run.loop.Step` of the run loop."""

    def __init__(self, recipe: Recipe, data: DataBundle, store: RunStore, events: Callable[[str], None]) -> None:
        self.recipe, self.data, self.store, self.events = recipe, data, store, events
        self.rows: list[dict[str, Any]] = []  # the teachers' training rows, in report order
        self._student: nn.Module | None = None

    # -- teachers -------------------------------------------------------------------------------
    def teachers(self, ctx: RunContext) -> list[nn.Module]:
        """Every teacher of the recipe, trained when it asks to be, on ``ctx.device``."""
        teachers = []
        for i, (spec, name) in enumerate(zip(self.recipe.teachers, self.recipe.teacher_names())):
            done = run_step(self._teacher_step(spec, name, i, ctx), self.store, self.events)
            assert done.model is not None  # a teacher step always makes a model
            if done.row:
                self.rows.append(done.row)
            teachers.append(done.model.to(ctx.device))
        return teachers

    def _teacher_step(self, spec: ModelSpec, name: str, i: int, ctx: RunContext) -> Step:
        """Teacher ``i`` as a step: built (and trained when it asks to be); the first one is the run's baseline."""
        train = spec.train
        return Step(name=name, depends_on=[self.recipe.seed, self.recipe.data.model_dump(), spec.model_dump()],
                    run=lambda: self._teacher(spec, name, i, ctx), kind="teacher", work_dir=self.store.out / "work" / name,
                    load=self.store.load, before_measure=self.store.set_baseline if i == 0 else None,
                    max_seconds=self.recipe.resources.max_stage_seconds if train is not None else None,
                    oom=(f"training {name}", train.batch_size or self.data.batch_size) if train is not None else None,
                    reused_note="reusing finished model")

    def _teacher(self, spec: ModelSpec, name: str, i: int, ctx: RunContext) -> StepOutput:
        # Seed before building: a resumed run must initialise exactly as an uninterrupted one.
        seed_everything(self.recipe.seed + 1000 * i)
        model = self._build(spec, training=spec.train is not None)
        if i == 0:
            self._check_student_early(model)  # before the teacher trains
        if spec.train is None:
            return StepOutput(model=model.eval())
        if self.data.task != "classification":
            raise RecipeError(f"teacher {name!r}: `train` needs a labeled classification dataset; give a trained model instead (omit `train`).")
        self.events(f"{name}: training up to {spec.train.epochs} epochs")
        start = time.perf_counter()
        # The teacher learns from the full labeled split even when the student's labels are reduced.
        split = self.data.teacher_train if self.data.teacher_train is not None else self.data.train
        loader = self.data.loader(split, spec.train.batch_size, shuffle=True, seed=self.recipe.seed)
        result = fit(model, cross_entropy, loader, spec.train, ctx, evaluate=lambda m: task_metric(m, self.data, "val"),
                     checkpoint_dir=self.store.out / "work" / name, description=f"train {name}")
        row: dict[str, Any] = {"name": f"train_{name}", "seconds": round(time.perf_counter() - start, 3), "status": "done",
                               "details": {"best_val": result.best_metric, **result.summary()}}
        note = convergence_note(result, f"training {name}", spec.train.min_loss_improvement)
        if note:
            row["notes"] = [note]
        return StepOutput(model=model, row=row)

    # -- student --------------------------------------------------------------------------------
    def student(self, teacher: nn.Module) -> nn.Module:
        """The model the stages start from: the recipe's student, ``auto`` from the teacher, or a copy of it."""
        spec = self.recipe.student
        if spec is not None and spec.model is not None:
            return self._student if self._student is not None else self._build_student(spec)
        seed_everything(self.recipe.seed + 500)
        return self._derived_student(teacher)

    def _build(self, spec: ModelSpec, training: bool) -> nn.Module:
        ref, limits = str(spec.model), self.recipe.resources

        def build() -> nn.Module:
            return build_model(ref, spec.args, input_shape=self.data.input_shape, num_classes=self.data.num_classes)

        # hf: is counted from a `config` (from_config builds on meta); an hf directory checks its config against its weights.
        countable = is_safe_ref(ref) and (not ref.startswith("hf:") or "config" in (spec.args or {}))
        if countable:
            # Count on the meta device first: a model over the limits or the free memory is refused before it is allocated
            # (allocating first fails as an out-of-memory error that points at the batch size, not at the model).
            try:
                with torch.device("meta"):
                    shape_only: nn.Module | None = build()
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                shape_only = None  # a constructor that needs real tensors: check after building instead
            if shape_only is not None:
                check_model_fits(shape_only, limits, ref, training=training)
                _check_fits_free_memory(shape_only, ref, training)
        model = build()
        check_model_fits(model, limits, ref, training=training)
        check_model_fits_data(model, self.data, ref)  # too few outputs for the labels: refused before training
        return model

    def _trains_student(self) -> bool:
        # a stage that runs backward needs weights + gradients + AdamW state in memory, not only the weights
        return any(s.tags.backward for s in self.recipe.stages) or self.recipe.target is not None

    def _build_student(self, spec: ModelSpec) -> nn.Module:
        # The student's initialisation must not depend on whether the teacher was trained or reloaded.
        seed_everything(self.recipe.seed + 500)
        return self._build(spec, training=self._trains_student())

    def _check_student_early(self, teacher: nn.Module) -> None:
        """Check the student against the resource limits as soon as the (untrained) teacher exists."""
        spec = self.recipe.student
        if spec is not None and spec.model is not None:
            self._student = self._build_student(spec)
        else:
            self._derived_student(teacher, copy_teacher=False)

    def _derived_student(self, teacher: nn.Module, *, copy_teacher: bool = True) -> nn.Module:
        """The student made from the teacher (a copy, or ``auto``), checked against the resource limits."""
        auto = self.recipe.student.auto if self.recipe.student is not None else None
        if auto is None:
            model, what = (copy.deepcopy(teacher) if copy_teacher else teacher), "student (a copy of the teacher)"
        else:
            model = derive_student(teacher, width=auto.width, depth=auto.depth)
            what = f"student (auto: width {auto.width:g}, depth {auto.depth:g})"
        check_model_fits(model, self.recipe.resources, what, training=self._trains_student())
        return model


def _check_fits_free_memory(shape_only: nn.Module, ref: str, training: bool) -> None:
    """Refuse a model whose weights (and, to train it, gradients and AdamW state) exceed the free memory."""
    free = available_memory_bytes()
    need_mb = model_memory_mb(shape_only, training)
    if free is not None and need_mb * MB > free:
        what = "to train (weights, gradients and AdamW state)" if training else "for its weights"
        raise RecipeError(f"model {ref!r} needs about {need_mb * MB / 1e9:.3g} GB {what}, more than the {free / 1e9:.3g} GB free on this "
                          "machine, so it was not built. Pick smaller layers (its args) or a smaller model.")

"""Run a recipe: data → teacher(s) → initial model → each stage → measure and save → report card.

Every model (teachers, each stage's output, intermediate models a stage reports) is saved under
``OUT/models/<name>/`` and measured by the same code. ``state.json`` records each finished step with a
fingerprint of the recipe parts it depends on, so ``resume=True`` skips finished, unchanged steps
and continues a half-finished stage from its last epoch checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import slimtorch.stages  # noqa: F401  (registers every stage)
from slimtorch import artifact
from slimtorch.core import STAGES, RunContext, StageRecord, seed_everything, silent_progress
from slimtorch.data import DataBundle, build_data
from slimtorch.device import device_facts, resolve_device
from slimtorch.distributed import barrier, init_from_env, is_main, local_only, main_then_all, world_size
from slimtorch.errors import ArtifactError, OutputDirError, RecipeError
from slimtorch.io import atomic_write_json, atomic_write_text
from slimtorch.measure import Measurement, check_model_fits_data, measure, outputs_on
from slimtorch.measure.accuracy import task_metric
from slimtorch.measure.llm import causal_lm_of
from slimtorch.measure.runner import retime_side_by_side
from slimtorch.models import build_model
from slimtorch.models.architecture import is_safe_ref
from slimtorch.outdir import claim_out_dir
from slimtorch.recipe import Recipe, dump_recipe, load_recipe
from slimtorch.recipe.schema import ModelSpec, StageSpec
from slimtorch.report import build_report, write_report
from slimtorch.report.card import Report
from slimtorch.resources import check_model_fits, named_out_of_memory, time_budget
from slimtorch.train import convergence_note, cross_entropy, fit
from slimtorch.units import MB
from slimtorch.version import __version__

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
# Stages that may train the model they are given (their memory need is weights + grads + AdamW state).
TRAINING_STAGES = frozenset({"distill", "finetune", "lora", "prune"})


@dataclass
class RunResult:
    """What :func:`compress` returns: where it wrote, the typed report card, the final model, the records.

    ``report`` is None on torchrun ranks other than 0 (rank 0 alone measures and writes).
    """

    out: Path
    report: Report | None
    model: nn.Module
    records: list[StageRecord] = field(default_factory=list)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _claim_work_dir(path: Path, fingerprint: str) -> None:
    """Epoch checkpoints in ``path`` may only resume the same computation: clear them if it changed."""
    marker = path / "FINGERPRINT"
    if path.exists() and (not marker.exists() or marker.read_text() != fingerprint):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, fingerprint)


class _State:
    """``state.json``: finished steps keyed by name, each with the fingerprint it was computed for."""

    def __init__(self, out: Path, resume: bool) -> None:
        self.path = out / STATE_FILE
        self.steps: dict[str, dict[str, Any]] = {}
        if resume and self.path.exists():
            try:
                self.steps = json.loads(self.path.read_text())["steps"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
                raise OutputDirError(f"{self.path} is corrupted ({exc}); use --force to start the run again.") from exc

    def done(self, name: str, fingerprint: str) -> dict[str, Any] | None:
        step = self.steps.get(name)
        return step if step and step.get("fingerprint") == fingerprint else None

    def invalidate_after(self, name: str) -> None:
        """A changed step makes every later step stale."""
        names = list(self.steps)
        if name in names:
            for later in names[names.index(name):]:
                self.steps.pop(later)

    def save(self, name: str, entry: dict[str, Any]) -> None:
        self.steps[name] = entry
        atomic_write_json(self.path, {"slimtorch_version": __version__, "steps": self.steps})


class _Run:
    """One run of a recipe; holds what the steps share so each method stays short."""

    def __init__(self, recipe: Recipe, out: Path, resume: bool, progress: Callable[..., Any], events: Callable[[str], None]) -> None:
        self.recipe, self.out, self.events = recipe, out, events
        self.state = _State(out, resume)
        self.progress = progress
        self.measurements: list[Measurement] = []
        self.stage_rows: list[dict[str, Any]] = []
        self.records: list[StageRecord] = []
        self.baseline_outputs: Tensor | None = None
        self.student: nn.Module | None = None
        self.data: DataBundle
        # Factories the recipe itself names may be rebuilt on resume; anything else a saved spec names is refused.
        self.trusted_refs = model_refs(recipe.to_dict())
        # Measurements depend on `evaluate` only: when it alone changed, finished models are measured again.
        self.evaluate_fp = _fingerprint(recipe.evaluate.model_dump())

    # -- models -------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"task": self.data.task, "num_classes": self.data.num_classes,
                "input_shape": list(self.data.input_shape) if self.data.input_shape else None}

    def _save_and_measure(self, model: nn.Module, name: str, stage: str) -> Measurement:
        artifact.save(model, self.out / "models" / name, **self._meta())
        return self._measure(model, name, stage)

    def _measure(self, model: nn.Module, name: str, stage: str) -> Measurement:
        # Latency is timed for all models together at the end (retime); causal LMs keep their own decode timings.
        m = measure(model, name=name, stage=stage, data=self.data, config=self.recipe.evaluate,
                    artifact_dir=self.out / "models" / name, baseline_outputs=self.baseline_outputs,
                    time_now=causal_lm_of(model) is not None)
        self.measurements.append(m)
        return m

    @staticmethod
    def _cpu(model: nn.Module, ctx: RunContext) -> nn.Module:
        """Artifacts are saved, and the report measured, from the CPU (device-neutral); a no-op on CPU runs."""
        return model.to("cpu") if ctx.device.type != "cpu" else model

    def retime(self) -> None:
        """Time every model of the run side by side in interleaved rounds (ratios free of machine drift)."""
        pairs = [(m, self._load_saved(m.name)) for m in self.measurements if not m.llm]
        if pairs:
            self.events(f"timing {len(pairs)} models side by side")
            retime_side_by_side(pairs, self.data, self.recipe.evaluate)

    def _load_saved(self, name: str) -> nn.Module:
        return artifact.load(self.out / "models" / name, trusted_refs=self.trusted_refs)

    def _reuse(self, name: str, done: dict[str, Any] | None, load: Callable[[str], nn.Module]) -> nn.Module | None:
        """The finished model of step ``name``, or None when it must run (again): not done, or damaged on disk."""
        if not done:
            return None
        try:
            model = load(name)
            for m in done.get("measurements", [])[1:]:  # the extra models a stage reported
                artifact.read_spec(self.out / "models" / m["name"])
            return model
        except ArtifactError as exc:
            self.events(f"{name}: the finished model on disk is damaged ({exc}); running the step again")
            return None

    def _remeasure(self, done: dict[str, Any], first: nn.Module) -> list[Measurement]:
        """Measure finished models again (the recipe's `evaluate` changed since they were measured)."""
        old = [Measurement.from_json(m) for m in (done.get("measurements") or [done["measurement"]])]
        self.events(f"{old[0].name}: evaluate settings changed; measuring the finished model again")
        return [self._measure(first if i == 0 else self._load_saved(m.name), m.name, m.stage) for i, m in enumerate(old)]

    def _build(self, spec: ModelSpec, training: bool) -> nn.Module:
        ref, limits = str(spec.model), self.recipe.resources
        build = lambda: build_model(ref, spec.args, input_shape=self.data.input_shape, num_classes=self.data.num_classes)
        if (limits.max_params or limits.max_memory_mb) and is_safe_ref(ref) and not ref.startswith("hf:"):
            # Count on the meta device first: a model over the limit is refused before its memory is allocated.
            try:
                with torch.device("meta"):
                    shape_only = build()
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                shape_only = None  # a constructor that needs real tensors: check after building instead
            if shape_only is not None:
                check_model_fits(shape_only, limits, spec.model, training=training)
        model = build()
        check_model_fits(model, limits, spec.model, training=training)
        check_model_fits_data(model, self.data, ref)  # too few outputs for the labels: refused before training
        return model

    def _trains_student(self) -> bool:
        return any(s.kind in TRAINING_STAGES for s in self.recipe.stages) or self.recipe.target is not None

    def teachers(self, ctx: RunContext) -> list[nn.Module]:
        teachers = []
        for i, spec in enumerate(self.recipe.teachers):
            name = spec.name or ("teacher" if i == 0 else f"teacher_{i + 1}")
            fp = _fingerprint(self.recipe.seed, self.recipe.data.model_dump(), spec.model_dump())
            done = self.state.done(name, fp)
            reused = self._reuse(name, done, self._load_saved)
            if reused is not None and done is not None:
                self.events(f"{name}: reusing finished model")
                model, row = reused, done.get("row")
                if row:
                    self.stage_rows.append(row)
            else:
                done = None
                self.state.invalidate_after(name)
                if is_main():
                    _claim_work_dir(self.out / "work" / name, fp)
                barrier()  # stale checkpoints are gone before any rank looks for one
                model, row = self._teacher(spec, name, i, ctx)
            if is_main():  # one process saves and measures; the others wait at the barrier below
                self._cpu(model, ctx)
                if i == 0:
                    self.baseline_outputs = outputs_on(model, self.data, self.recipe.evaluate)
                if done is None:
                    m = self._save_and_measure(model, name, "teacher")
                elif done.get("evaluate") != self.evaluate_fp:
                    m = self._remeasure(done, model)[0]
                else:
                    m = Measurement.from_json(done["measurement"])
                    self.measurements.append(m)
                self.state.save(name, {"fingerprint": fp, "measurement": m.to_json(), "seconds": m.seconds, "row": row,
                                       "evaluate": self.evaluate_fp})
            barrier()
            teachers.append(model.to(ctx.device))
        return teachers

    def _teacher(self, spec: ModelSpec, name: str, i: int, ctx: RunContext) -> tuple[nn.Module, dict[str, Any] | None]:
        # Seed before building: a resumed run must initialise exactly as an uninterrupted one.
        seed_everything(self.recipe.seed + 1000 * i)
        model = self._build(spec, training=spec.train is not None)
        if i == 0:
            self._check_student_early(model)  # before the teacher trains
        if spec.train is None:
            return model.eval(), None
        if self.data.task != "classification":
            raise RecipeError(f"teacher {name!r}: `train` needs a labeled classification dataset; give a trained model instead (omit `train`).")
        self.events(f"{name}: training up to {spec.train.epochs} epochs")
        start = time.perf_counter()
        # The teacher learns from the full labeled split even when the student's labels are reduced.
        split = self.data.teacher_train if self.data.teacher_train is not None else self.data.train
        loader = self.data.loader(split, spec.train.batch_size, shuffle=True, seed=self.recipe.seed)
        with time_budget(self.recipe.resources.max_stage_seconds) as budget, \
                named_out_of_memory(f"training {name}", spec.train.batch_size or self.data.batch_size):
            result = fit(model, cross_entropy, loader, spec.train, ctx, evaluate=lambda m: task_metric(m, self.data, "val"),
                         checkpoint_dir=self.out / "work" / name, description=f"train {name}")
        row: dict[str, Any] = {"name": f"train_{name}", "seconds": round(time.perf_counter() - start, 3), "status": "done",
                               "details": {"best_val": result.best_metric, **result.summary()}}
        note = convergence_note(result, f"training {name}", spec.train.min_loss_improvement)
        if note:
            row["notes"] = [note]
        if budget is not None and budget.notes:
            row.update(status="stopped at time budget", notes=row.get("notes", []) + list(budget.notes))
        self.stage_rows.append(row)
        return model, row

    def _build_student(self, spec: ModelSpec) -> nn.Module:
        # The student's initialisation must not depend on whether the teacher was trained or reloaded.
        seed_everything(self.recipe.seed + 500)
        return self._build(spec, training=self._trains_student())

    def _check_student_early(self, teacher: nn.Module) -> None:
        """Check the student against the resource limits as soon as the (untrained) teacher exists."""
        spec = self.recipe.student
        if spec is not None and spec.model is not None:
            self.student = self._build_student(spec)
        else:
            self._derived_student(teacher, copy_teacher=False)

    def _derived_student(self, teacher: nn.Module, *, copy_teacher: bool = True) -> nn.Module:
        """The student made from the teacher (a copy, or ``auto``), checked against the resource limits."""
        spec = self.recipe.student
        if spec is None:
            model, what = (copy.deepcopy(teacher) if copy_teacher else teacher), "student (a copy of the teacher)"
        else:
            from slimtorch.distill.auto_student import derive_student

            model = derive_student(teacher, width=spec.auto.width, depth=spec.auto.depth)
            what = f"student (auto: width {spec.auto.width:g}, depth {spec.auto.depth:g})"
        check_model_fits(model, self.recipe.resources, what, training=self._trains_student())
        return model

    def initial_model(self, teacher: nn.Module) -> nn.Module:
        spec = self.recipe.student
        if spec is not None and spec.model is not None:
            return self.student if self.student is not None else self._build_student(spec)
        seed_everything(self.recipe.seed + 500)
        return self._derived_student(teacher)

    # -- stages -------------------------------------------------------------------------------
    def stages(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, str]:
        final = "teacher"
        prefix = [self.recipe.seed, self.recipe.data.model_dump(), [t.model_dump() for t in self.recipe.teachers],
                  self.recipe.student.model_dump() if self.recipe.student else None]
        for i, spec in enumerate(self.recipe.stages):
            name = f"{i + 1}_{spec.kind}"
            prefix.append([spec.kind, spec.config.model_dump()])
            fp = _fingerprint(*prefix)
            done = self.state.done(name, fp)
            reused = self._reuse(name, done, self._reload_stage_model)
            if reused is not None and done is not None:
                self.events(f"stage {i + 1}/{len(self.recipe.stages)} {spec.kind}: reusing finished result")
                model = reused
                if is_main() and done.get("evaluate") != self.evaluate_fp:  # measurements live on rank 0
                    done["measurements"] = [m.to_json() for m in self._remeasure(done, model)]
                    done["evaluate"] = self.evaluate_fp
                    self.state.save(name, done)
                elif is_main():
                    self.measurements.extend(Measurement.from_json(m) for m in done["measurements"])
                self.stage_rows.append(done["row"])
                final = name
                continue
            self.state.invalidate_after(name)
            self.events(f"stage {i + 1}/{len(self.recipe.stages)} {spec.kind}")
            ctx.stage_index = i + 1
            if is_main():
                _claim_work_dir(ctx.stage_dir(spec.kind), fp)
            barrier()
            seed_everything(self.recipe.seed + i + 1)
            stage = STAGES.get(spec.kind)(spec.config)
            start = time.perf_counter()
            with time_budget(self.recipe.resources.max_stage_seconds) as budget, \
                    named_out_of_memory(f"stage {i + 1} ({spec.kind})", getattr(spec.config, "batch_size", None) or self.data.batch_size):
                model, record = stage.apply(model, ctx)
            record.seconds = time.perf_counter() - start
            if budget is not None and budget.notes:
                record.status = "stopped at time budget"
                record.notes.extend(budget.notes)
            self.records.append(record)
            row = {"model": name, **record.to_json()}
            self.stage_rows.append(row)
            if is_main():
                self._cpu(model, ctx)
                measured = [self._save_and_measure(model, name, spec.kind)]
                for extra_name, extra in record.extra_models:
                    measured.append(self._save_and_measure(self._cpu(extra, ctx), f"{name}_{extra_name}", spec.kind))
                self.state.save(name, {"fingerprint": fp, "row": row, "measurements": [m.to_json() for m in measured],
                                       "evaluate": self.evaluate_fp})
            barrier()
            final = name
        return model, final

    def plan(self, model: nn.Module, ctx: RunContext, target: Any) -> dict[str, Any]:
        """Choose stages for ``target`` by measuring candidates; the plan replaces the recipe's stages."""
        from slimtorch.plan import Plan, plan

        fp = _fingerprint(self.recipe.seed, self.recipe.data.model_dump(), [t.model_dump() for t in self.recipe.teachers],
                          self.recipe.student.model_dump() if self.recipe.student else None, target.model_dump())
        done = self.state.done("plan", fp)
        if done:
            self.events("plan: reusing the finished search")
            chosen = Plan(**done["plan"])
        else:
            self.events(f"plan: measuring {len(target.sparsities) * len(target.quantize)} candidates for {target.kind}")
            self.state.invalidate_after("plan")
            # Candidates are timed: latencies differ between processes, so rank 0 alone chooses and tells the others.
            with local_only():
                chosen = main_then_all(lambda: plan(model, ctx, target, threads=self.recipe.evaluate.latency.threads))
            if is_main():
                self.state.save("plan", {"fingerprint": fp, "plan": chosen.to_json()})
        self.events(chosen.message)
        recovery = list(self.recipe.stages)
        if not recovery and self.data.task == "classification" and target.recover_epochs > 0:
            from slimtorch.train import FinetuneConfig

            recovery = [StageSpec(kind="finetune", config=FinetuneConfig(epochs=target.recover_epochs))]
        batches = sorted({*self.recipe.evaluate.latency.batch_sizes, target.batch})
        evaluate = self.recipe.evaluate.model_copy(update={"latency": self.recipe.evaluate.latency.model_copy(update={"batch_sizes": batches})})
        self.recipe = self.recipe.model_copy(update={"stages": chosen.stages(recovery), "evaluate": evaluate})
        return chosen.to_json()

    def _reload_stage_model(self, name: str) -> nn.Module:
        """Reload a finished stage's model, re-arming pruning masks so later training keeps them."""
        model_dir = self.out / "models" / name
        model = self._load_saved(name)
        masked = artifact.read_spec(model_dir).get("masked_modules") or []
        if masked:
            from slimtorch.prune.masks import masks_from_zeros, rearm_masks_

            # A weight that is exactly zero in a masked layer was masked: restore the mask from it.
            rearm_masks_(model, masks_from_zeros(model, masked))
        return model


def model_refs(tree: Any) -> frozenset[str]:
    """Every string under a ``model:`` key of the recipe (teachers, student, assistants)."""
    found: set[str] = set()
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "model" and isinstance(value, str):
                found.add(value)
            else:
                found |= model_refs(value)
    elif isinstance(tree, list):
        for item in tree:
            found |= model_refs(item)
    return frozenset(found)


def _check_target(target: Any, plan: dict[str, Any], final: Measurement) -> list[str]:
    """Compare the final model with the budget and the accuracy floor; say plainly what was missed."""
    warnings = []
    latency = final.latency_ms.get(str(target.batch), {}).get("p50")
    if target.kind == "size_mb" and final.size_bytes is not None and final.size_bytes / MB > target.size_mb:
        warnings.append(f"target size_mb≤{target.size_mb} missed: the final artifact is {final.size_bytes / MB:.3f} MB.")
    if target.kind == "latency_ms" and latency is not None and latency > target.latency_ms:
        warnings.append(f"target latency_ms≤{target.latency_ms} at batch {target.batch} missed: the final model measured {latency:.4g} ms p50.")
    if target.kind == "speedup" and latency is not None:
        achieved = plan["baseline_latency_ms"] / latency
        if achieved < target.speedup:
            warnings.append(f"target speedup≥{target.speedup}× missed: measured {achieved:.2f}× at batch {target.batch}.")
    # the floor applies to the task metric: accuracy for classifiers, cosine to the original for encoders
    _, metric = final.primary_metric
    if target.min_accuracy is not None and metric is not None and metric < target.min_accuracy:
        warnings.append(f"accuracy floor {target.min_accuracy:.4f} missed: the final model scores {metric:.4f}. Add recovery epochs or relax the budget.")
    if not plan["is_feasible"]:
        warnings.append(plan["message"])
    return warnings


def compress(
    recipe: str | Path | dict[str, Any] | Recipe,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: Callable[..., Any] | None = None,
    events: Callable[[str], None] | None = None,
    device: str | None = None,
) -> RunResult:
    """Run a recipe end to end and write the report card to ``out``.

    Under ``torchrun`` every rank calls this: training is data-parallel, rank 0 alone writes ``out``
    and returns the report (other ranks get an empty one).

    Args:
        recipe: a YAML path, YAML text, a dict, or a :class:`Recipe`.
        out: output directory (default ``runs/<recipe name>``).
        resume: continue a previous run in ``out``, skipping finished, unchanged steps.
        force: replace an existing run in ``out``.
        progress: ``progress(description, total)`` context manager for progress bars (the CLI's).
        events: called with one-line status messages (the CLI prints them).
        device: overrides the recipe's ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    Example:
        >>> result = slimtorch.compress("examples/digits.yaml", out="runs/digits")  # doctest: +SKIP
        >>> result.report.final_model.metrics["accuracy"]  # doctest: +SKIP
    """
    recipe = load_recipe(recipe)
    out = Path(out or Path("runs") / recipe.name)
    where = resolve_device(device or recipe.device)
    init_from_env(where)
    if world_size() > 1 and recipe.resources.max_stage_seconds is not None:
        raise RecipeError("resources.max_stage_seconds is not supported under torchrun (ranks would stop at different "
                          "steps); remove it or run in one process.")
    with _owned(out, resume=resume, force=force):
        return _compress(recipe, out, resume, progress, events, where)


@contextmanager
def _owned(out: Path, *, resume: bool, force: bool) -> Iterator[None]:
    """Rank 0 claims and locks ``out``; the other ranks learn whether it worked (and fail the same way)."""
    with ExitStack() as stack:

        def claim() -> None:
            stack.enter_context(claim_out_dir(out, resume=resume, force=force))

        main_then_all(claim)
        yield


def _compress(recipe: Recipe, out: Path, resume: bool, progress: Callable[..., Any] | None,
              events: Callable[[str], None] | None, device: torch.device) -> RunResult:
    events = events or (lambda msg: log.info(msg))
    if not is_main():
        events, progress = (lambda msg: None), None  # one process speaks
    else:
        atomic_write_text(out / "recipe.yaml", dump_recipe(recipe))
    seed_everything(recipe.seed)
    d = recipe.data
    run = _Run(recipe, out, resume, progress or silent_progress, events)
    run.data = build_data(d.source, args=d.args, seed=recipe.seed, batch_size=d.batch_size,
                          labeled_fraction=d.labeled_fraction, transfer=d.transfer, num_classes=d.num_classes)
    ctx = RunContext(data=run.data, seed=recipe.seed, work_dir=out / "work", task=run.data.task, progress=run.progress,
                     device=device, precision=recipe.precision)
    teachers = run.teachers(ctx)
    ctx.teacher, ctx.extras["teachers"] = teachers[0], teachers
    model = run.initial_model(teachers[0])
    extra: dict[str, Any] = {"data": {"source": d.source, **run.data.info},
                             "training": {**device_facts(device), "processes": world_size(), "precision": recipe.precision}}
    if recipe.target is not None:
        extra["plan"] = run.plan(model, ctx, recipe.target)
    model, final = run.stages(model, ctx)
    if not is_main():
        return RunResult(out=out, report=None, model=model, records=run.records)
    run.retime()
    names = [m.name for m in run.measurements]
    warnings = []
    if recipe.target is not None:
        warnings = _check_target(recipe.target, extra["plan"], next(m for m in run.measurements if m.name == final))
    report = build_report(
        recipe=recipe.to_dict(), baseline=names[0], final=final, models=run.measurements, stages=run.stage_rows,
        warnings=warnings, extra=extra,
    )
    write_report(out, report)
    return RunResult(out=out, report=Report.from_json(report), model=model, records=run.records)

"""Run a recipe: data → teacher(s) → student → plan → the run loop over the stages → report card.

This module is the recipe's orchestration only. The models a run starts from are built in
:mod:`slimtorch.run.starting_models`; every step (each teacher, the plan, each stage) is fingerprinted,
reused, bounded, saved, measured and resumed by :func:`slimtorch.run.loop.run_step` (stages through
:func:`slimtorch.run.loop.run_stages`); ``state.json`` and fingerprints live in :mod:`slimtorch.run.resume`;
the saved models and their measurements in :class:`slimtorch.run.store.RunStore`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtorch.core import STAGES, RunContext, StageRecord, seed_everything, silent_progress
from slimtorch.data import build_data
from slimtorch.device import device_facts, resolve_device
from slimtorch.distributed import init_from_env, is_main, launched_by_torchrun, local_only, main_then_all, world_size
from slimtorch.errors import RecipeError
from slimtorch.io import atomic_write_text
from slimtorch.launch import check_process_count, read_finished_run, run_local_processes
from slimtorch.logs import quiet_library_logs
from slimtorch.measure import Measurement
from slimtorch.outdir import RECIPE_COPY, claim_out_dir
from slimtorch.plan import Plan, TargetConfig, plan
from slimtorch.prune import PruneConfig
from slimtorch.recipe import Recipe, dump_recipe, load_recipe
from slimtorch.recipe.schema import StageSpec
from slimtorch.report import write_report
from slimtorch.report.card import Report
from slimtorch.report.hardware import input_of
from slimtorch.run.loop import Step, StepOutput, run_stages, run_step
from slimtorch.run.resume import ResumeState
from slimtorch.run.starting_models import StartingModels
from slimtorch.run.store import RunStore, trusted_calls
from slimtorch.track.log_run import track_run
from slimtorch.train import FinetuneConfig
from slimtorch.units import MB

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What :func:`compress` returns: where it wrote, the typed report card, the final model, the records.

    ``report`` is None on torchrun ranks other than 0 (rank 0 alone measures and writes).
    """

    out: Path
    report: Report | None
    model: nn.Module
    records: list[StageRecord] = field(default_factory=list)


def _before_stages(recipe: Recipe) -> list[Any]:
    """The recipe parts every stage depends on (each stage's fingerprint starts with them)."""
    return [recipe.seed, recipe.data.model_dump(), [t.model_dump() for t in recipe.teachers],
            recipe.student.model_dump() if recipe.student else None]


def _plan(recipe: Recipe, model: nn.Module, ctx: RunContext, target: TargetConfig, store: RunStore,
          events: Callable[[str], None]) -> tuple[Plan, Recipe]:
    """Choose stages for ``target`` by measuring candidates (the ``plan`` step); returns the plan and the recipe running it.

    The planned recipe's stages replace the recipe's own (which become the recovery after pruning), and
    its ``evaluate`` also times the target's batch size.
    """
    def search() -> StepOutput:
        events(f"plan: measuring {target.candidate_count} candidates for {target.kind}")
        # Candidates are timed: latencies differ between processes, so rank 0 alone chooses and tells the others.
        with local_only():
            chosen = main_then_all(lambda: plan(model, ctx, target, threads=recipe.evaluate.latency.threads))
        return StepOutput(output=chosen.to_json())

    step = Step(name="plan", depends_on=[*_before_stages(recipe), target.model_dump()], run=search,
                reused_note="reusing the finished search")
    done = run_step(step, store, events)
    assert done.output is not None  # the plan step always makes a plan
    chosen = Plan.from_json(done.output)
    events(chosen.message)
    recovery = list(recipe.stages)
    if not recovery and ctx.data.task == "classification" and target.recover_epochs > 0:
        recovery = [StageSpec(kind="finetune", config=FinetuneConfig(epochs=target.recover_epochs))]
    latency = recipe.evaluate.latency
    batches = sorted({*latency.batch_sizes, target.batch})
    evaluate = recipe.evaluate.model_copy(update={"latency": latency.model_copy(update={"batch_sizes": batches})})
    return chosen, recipe.model_copy(update={"stages": chosen.stages(recovery), "evaluate": evaluate})


def _check_target(target: TargetConfig, plan: Plan, final: Measurement) -> list[str]:
    """Compare the final model with the budget and the accuracy floor; say plainly what was missed."""
    warnings = []
    timing = final.latency_ms.get(str(target.batch))
    latency = None if timing is None else timing.p50
    if target.size_mb is not None and final.size_bytes is not None and final.size_bytes / MB > target.size_mb:
        warnings.append(f"target size_mb≤{target.size_mb} missed: the final artifact is {final.size_bytes / MB:.3f} MB.")
    if target.latency_ms is not None and latency is not None and latency > target.latency_ms:
        warnings.append(f"target latency_ms≤{target.latency_ms} at batch {target.batch} missed: the final model measured {latency:.4g} ms p50.")
    if target.speedup is not None and latency is not None:  # exactly one budget is set (TargetConfig checks it)
        achieved = plan.baseline_latency_ms / latency
        if achieved < target.speedup:
            warnings.append(f"target speedup≥{target.speedup}× missed: measured {achieved:.2f}× at batch {target.batch}.")
    # the floor applies to the task metric: accuracy for classifiers, cosine to the original for encoders
    _, metric = final.primary_metric
    if target.min_accuracy is not None and metric is not None and metric < target.min_accuracy:
        warnings.append(f"accuracy floor {target.min_accuracy:.4f} missed: the final model scores {metric:.4f}. Add recovery epochs or relax the budget.")
    if not plan.is_feasible:
        warnings.append(plan.message)
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
    if recipe.processes > 1 and not launched_by_torchrun():
        check_process_count(recipe.processes, device or recipe.device)  # before any worker starts or OUT is touched
        run_local_processes(dump_recipe(recipe), out, recipe.processes, resume=resume, force=force, device=device,
                            events=events or log.info)
        report, model = read_finished_run(out, trusted_calls(recipe.to_dict()))
        return RunResult(out=out, report=report, model=model)
    init_from_env(where)
    if world_size() > 1 and recipe.resources.max_stage_seconds is not None:
        raise RecipeError("resources.max_stage_seconds is not supported under torchrun (ranks would stop at different "
                          "steps); remove it or run in one process.")
    with _owned(out, resume=resume, force=force), quiet_library_logs():
        return _compress(recipe, out, resume, progress, events, where)


@contextmanager
def _owned(out: Path, *, resume: bool, force: bool) -> Iterator[None]:
    """Rank 0 claims and locks ``out``; the other ranks learn whether it worked (and fail the same way)."""
    with ExitStack() as stack:

        def claim() -> None:
            stack.enter_context(claim_out_dir(out, resume=resume, force=force))

        main_then_all(claim)
        yield


NEAR_CHANCE = 1.5  # a baseline accuracy below this many times chance has not learned the task


def _untrained_baseline(baseline: Measurement, num_classes: int | None) -> list[str]:
    """A warning when the model everything is compared with scores near chance: its ratios prove nothing."""
    accuracy = baseline.metrics.get("accuracy")
    if not num_classes or num_classes < 2 or not isinstance(accuracy, (int, float)) or accuracy >= NEAR_CHANCE / num_classes:
        return []
    return [(f"the baseline {baseline.name} scores {100 * accuracy:.2f}% accuracy, near chance ({100 / num_classes:.1f}% for "
             f"{num_classes} classes): it has not learned the task, so the compressed models' accuracy and agreement say "
             "little. Train it longer (teacher.train.epochs), or check that inputs and labels match.")]


UNRECOVERED_DROP = 0.01  # a metric fall (fraction) a pruning step with no recovery after it is called out for


def _unrecovered_pruning(stages: list[StageSpec], measured: list[Measurement]) -> list[str]:
    """A warning for a prune stage that cost metric when neither it nor any later stage trained the model back."""
    by_name = {m.name: i for i, m in enumerate(measured)}
    out = []
    for n, spec in enumerate(stages, start=1):
        if not isinstance(spec.config, PruneConfig) or f"{n}_prune" not in by_name:
            continue
        if any(s.tags.trains for s in stages[n - 1:]):  # it, or a later stage, trains the model back
            continue
        i = by_name[f"{n}_prune"]
        start = input_of(measured[:i])
        if start is None:
            continue
        name, before = start.primary_metric
        _, after = measured[i].primary_metric
        if before is None or after is None or before - after < UNRECOVERED_DROP:
            continue
        points = f"{100 * (before - after):.2f} points of {name}" if name == "accuracy" else f"{before - after:.4f} of {name}"
        out.append(f"{n}_prune lost {points} ({before:.4f} → {after:.4f}) and nothing trained it back: a one-shot prune "
                   "stage trains only for finetune_epochs (0 by default; recover: finetune or distill says how). Add e.g. "
                   "`finetune_epochs: 5`, or a finetune/distill stage after it.")
    return out


def _compress(recipe: Recipe, out: Path, resume: bool, progress: Callable[..., Any] | None,
              events: Callable[[str], None] | None, device: torch.device) -> RunResult:
    say: Callable[[str], None] = events or (lambda msg: log.info(msg))
    if not is_main():
        say, progress = (lambda msg: None), None  # one process speaks
    else:
        atomic_write_text(out / RECIPE_COPY, dump_recipe(recipe))
    seed_everything(recipe.seed)
    d = recipe.data
    data = build_data(d.source, args=d.args, seed=recipe.seed, batch_size=d.batch_size,
                      labeled_fraction=d.labeled_fraction, transfer=d.transfer, num_classes=d.num_classes)
    # Factories the recipe itself names may be rebuilt on resume; anything else a saved spec names is refused.
    store = RunStore(out, data, recipe.evaluate, ResumeState(out, resume), trusted_calls(recipe.to_dict()), say, device)
    ctx = RunContext(data=data, seed=recipe.seed, work_dir=out / "work", task=data.task, progress=progress or silent_progress,
                     device=device, precision=recipe.precision)
    starting = StartingModels(recipe, data, store, say)
    teachers = starting.teachers(ctx)
    ctx.teacher, ctx.teachers = teachers[0], teachers
    ctx.evaluate = recipe.evaluate  # how the run times its models: quantize's runtime: auto times candidates alike
    model = starting.student(teachers[0])
    extra: dict[str, Any] = {"data": {"source": d.source, **data.info},
                             "training": {**device_facts(device), "processes": world_size(), "precision": recipe.precision}}
    planned, chosen = recipe, None
    if recipe.target is not None:
        chosen, planned = _plan(recipe, model, ctx, recipe.target, store, say)
        extra["plan"] = chosen.to_json()
        store.widen_evaluate(planned.evaluate)
    run = run_stages(model, [STAGES.get(s.kind)(s.config) for s in planned.stages], ctx, store=store,
                     depends_on=_before_stages(recipe), max_stage_seconds=recipe.resources.max_stage_seconds, events=say)
    if not is_main():
        return RunResult(out=out, report=None, model=run.model, records=run.records)
    store.retime()
    names = [m.name for m in store.measurements]
    final = run.final or "teacher"
    warnings = _untrained_baseline(store.measurements[0], data.num_classes) + _unrecovered_pruning(planned.stages, store.measurements)
    if recipe.target is not None and chosen is not None:
        warnings += _check_target(recipe.target, chosen, next(m for m in store.measurements if m.name == final))
    report = Report.create(
        recipe=recipe.to_dict(), baseline=names[0], final=final, models=store.measurements,
        stages=starting.rows + run.rows, warnings=warnings, extra=extra,
    )
    write_report(out, report)
    track_run(recipe.tracking, out, report, say)
    return RunResult(out=out, report=report, model=run.model, records=run.records)

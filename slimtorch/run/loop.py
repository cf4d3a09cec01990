"""The run loop: the one place a step is fingerprinted, reused, claimed, bounded, saved, measured and resumed.

A run is a sequence of :class:`Step`\\ s — its teachers (:mod:`slimtorch.run.starting_models`), the plan
(:mod:`slimtorch.run.pipeline`) and each stage (:func:`run_stages`) — and :func:`run_step` is the one
function that runs them: fingerprint → reuse (or invalidate later steps) → claim the work folder → time
budget and out-of-memory naming → save → measure → ``state.json``. ``compress`` runs a recipe's stages
through :func:`run_stages` with a :class:`~slimtorch.run.store.RunStore` (each stage's model saved as
``models/<i>_<kind>``, measured, and reused by ``--resume`` while its fingerprint is unchanged); the
planner runs each candidate's stages through the same function with no store (nothing saved, nothing resumed).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from slimtorch.core import RunContext, Stage, StageRecord, seed_everything
from slimtorch.distributed import barrier, is_main
from slimtorch.measure.llm import with_model_tokens
from slimtorch.resources import named_out_of_memory, time_budget
from slimtorch.run.resume import StepEntry, claim_work_dir, fingerprint
from slimtorch.run.store import RunStore

STOPPED = "stopped at time budget"


@dataclass
class StepOutput:
    """What a step's ``run`` made.

    Attributes:
        model: the step's model, saved as ``models/<step name>`` and measured (None: the step saves no model).
        record: a stage's record (its report row is ``{"model": name, **record.to_json()}``).
        row: the report row of a step that is not a stage (a teacher's training); None: no row.
        output: what else the step made, stored in its ``state.json`` entry (the plan).
    """

    model: nn.Module | None = None
    record: StageRecord | None = None
    row: dict[str, Any] | None = None
    output: dict[str, Any] | None = None

    def report_row(self, name: str) -> dict[str, Any] | None:
        return {"model": name, **self.record.to_json()} if self.record is not None else self.row

    def stopped(self, notes: list[str]) -> None:
        """The time budget ran out during the step: say so in its record or row."""
        if self.record is not None:
            self.record.status = STOPPED
            self.record.notes.extend(notes)
        elif self.row is not None:
            self.row.update(status=STOPPED, notes=self.row.get("notes", []) + list(notes))


@dataclass
class Step:
    """One unit of a run the loop runs, reuses on ``--resume`` and invalidates when it changed.

    Attributes:
        name: its ``state.json`` key and the name its model is saved under.
        depends_on: the recipe parts it is computed from (its fingerprint).
        run: does the work (called only when no finished result may be reused).
        label: how status messages name it.
        kind: the ``stage`` its measurements carry (``teacher``, a stage kind).
        work_dir: its epoch-checkpoint folder, claimed for its fingerprint before it runs.
        load: reloads its finished model on resume (None: the step saves no model).
        before_measure: called on rank 0 with its model (new or reused) before it is measured.
        max_seconds: its wall-time budget.
        oom: ``(what, batch_size)`` an out-of-memory error in it is named with.
        reused_note: the status message's tail when a finished result is reused.
    """

    name: str
    depends_on: Sequence[Any]
    run: Callable[[], StepOutput]
    label: str = ""
    kind: str = ""
    work_dir: Path | None = None
    load: Callable[[str], nn.Module] | None = None
    before_measure: Callable[[nn.Module], None] | None = None
    max_seconds: float | None = None
    oom: tuple[str, int | None] | None = None
    reused_note: str = "reusing finished result"

    @property
    def fingerprint(self) -> str:
        return fingerprint(*self.depends_on)


@dataclass
class StepDone:
    """What :func:`run_step` returns: the step's model, its report row, what else it made, whether it ran now."""

    model: nn.Module | None
    row: dict[str, Any] | None
    output: dict[str, Any] | None
    ran: StepOutput | None  # None: reused


def run_step(step: Step, store: RunStore | None, say: Callable[[str], None]) -> StepDone:
    """Run ``step``, or reuse its finished result from ``store``; with a store its model is saved and measured.

    Under torchrun every rank runs the step; rank 0 alone claims, saves, measures and writes ``state.json``.
    """
    label = step.label or step.name
    if store is not None:
        step_fp = step.fingerprint
        done = store.finished(step.name, step_fp, step.load)
        if done is not None:
            say(f"{label}: {step.reused_note}")
            model, entry = done
            if is_main():  # measurements live on rank 0
                if model is not None and step.before_measure is not None:
                    step.before_measure(model)
                store.adopt(step.name, entry, model)
            barrier()
            return StepDone(model=model, row=entry.row, output=entry.output, ran=None)
        store.invalidate_from(step.name)
        if step.work_dir is not None:
            if is_main():
                claim_work_dir(step.work_dir, step_fp)
            barrier()  # stale checkpoints are gone before any rank looks for one
    made = _run_bounded(step)
    row = made.report_row(step.name)
    if store is not None:
        if is_main():
            model = store.on_cpu(made.model) if made.model is not None else None  # saved and measured from the CPU
            if model is not None and step.before_measure is not None:
                step.before_measure(model)
            extras = made.record.extra_models if made.record is not None else []
            store.finish(step.name, StepEntry(step_fp, row=row, output=made.output), model, extras, step.kind)
        barrier()
    return StepDone(model=made.model, row=row, output=made.output, ran=made)


def _run_bounded(step: Step) -> StepOutput:
    """``step.run`` under its time budget, with out-of-memory errors named."""
    with time_budget(step.max_seconds) as budget:
        if step.oom is None:
            made = step.run()
        else:
            with named_out_of_memory(*step.oom):
                made = step.run()
    if budget is not None and budget.notes:
        made.stopped(budget.notes)
    return made


@dataclass
class StagesRun:
    """What :func:`run_stages` returns.

    Attributes:
        model: the last stage's output (the input model when there are no stages).
        final: the saved name of the last stage's model (``<i>_<kind>``); None without a store or stages.
        records: the records of the stages that ran now (a reused stage has none).
        rows: one report row per stage, reused ones included (``{"model": name, **record.to_json()}``).
    """

    model: nn.Module
    final: str | None = None
    records: list[StageRecord] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_stages(
    model: nn.Module,
    stages: Sequence[Stage[Any]],
    ctx: RunContext,
    *,
    store: RunStore | None = None,
    depends_on: Sequence[Any] = (),
    reseed: bool = True,
    max_stage_seconds: float | None = None,
    events: Callable[[str], None] | None = None,
) -> StagesRun:
    """Apply ``stages`` to ``model`` in order and return the result.

    Args:
        model: the model the first stage receives.
        stages: stage objects (``STAGES.get(kind)(config)``); each may change the model in place.
        ctx: the run context; ``ctx.stage_index`` is set to each stage's 1-based position when ``store`` is given.
        store: where the run's models live. With a store each stage's work folder is claimed for its
            fingerprint, its output (and any extra models it reports) is saved and measured, and a stage
            finished earlier with the same fingerprint is reused. Without one nothing is saved or resumed.
        depends_on: what every stage's fingerprint starts with (the recipe parts before the stages).
        reseed: seed ``ctx.seed + i`` before stage ``i`` (a resumed run then matches an uninterrupted one).
        max_stage_seconds: wall-time budget of each stage; a stage stopped by it is recorded as such.
        events: called with one-line status messages.

    Returns:
        :class:`StagesRun`: the final model, its saved name, the new records and every stage's report row.
    """
    say = events or (lambda msg: None)
    result = StagesRun(model=model)
    chain = list(depends_on)
    for i, stage in enumerate(stages, start=1):
        chain.append([stage.name, stage.config.model_dump()])
        done = run_step(_stage_step(stage, i, len(stages), result, ctx, list(chain), store, reseed, max_stage_seconds, say),
                        store, say)
        assert done.model is not None and done.row is not None  # a stage always returns a model and a record
        result.model = done.model
        result.rows.append(done.row)
        if done.ran is not None and done.ran.record is not None:
            result.records.append(done.ran.record)
        if store is not None:
            result.final = f"{i}_{stage.name}"
    return result


def _stage_step(stage: Stage[Any], i: int, count: int, result: StagesRun, ctx: RunContext, depends_on: list[Any],
                store: RunStore | None, reseed: bool, max_seconds: float | None, say: Callable[[str], None]) -> Step:
    """Stage ``i`` as a step: applied to the model ``result`` holds, seeded ``ctx.seed + i``."""
    label = f"stage {i}/{count} {stage.name}"

    def run() -> StepOutput:
        if store is not None:
            ctx.stage_index = i
        say(label)
        if reseed:
            seed_everything(ctx.seed + i)
        start = time.perf_counter()
        # A causal LM reads text through its own tokenizer: calibration, importance and training batches
        # tokenized any other way would be valid-looking ids that mean other words (SmolLM2 vs the default vocabulary).
        stage_ctx = dataclasses.replace(ctx, data=with_model_tokens(ctx.data, result.model))
        model, record = stage.apply(result.model, stage_ctx)
        record.seconds = time.perf_counter() - start
        return StepOutput(model=model, record=record)

    batch_size = getattr(stage.config, "batch_size", None) or ctx.data.batch_size
    return Step(name=f"{i}_{stage.name}", depends_on=depends_on, run=run, label=label, kind=stage.name,
                work_dir=ctx.work_dir / f"{i:02d}_{stage.name}" if store is not None else None,
                load=store.load_stage_model if store is not None else None, max_seconds=max_seconds,
                oom=(f"stage {i} ({stage.name})", batch_size))


"""The run loop: the one place a stage is seeded, timed, bounded, saved, measured and resumed.

``compress`` runs a recipe's stages through :func:`run_stages` with a :class:`~slimtorch.run.store.RunStore`
(each stage's model saved as ``models/<i>_<kind>``, measured, and reused by ``--resume`` while its
fingerprint is unchanged); the planner runs each candidate's stages through the same function with no
store (nothing saved, nothing resumed).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from slimtorch.core import RunContext, Stage, StageRecord, seed_everything
from slimtorch.distributed import barrier, is_main
from slimtorch.measure import Measurement
from slimtorch.measure.llm import with_model_tokens
from slimtorch.resources import named_out_of_memory, time_budget
from slimtorch.run.resume import claim_work_dir, fingerprint
from slimtorch.run.store import RunStore


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


def _on_cpu(model: nn.Module, ctx: RunContext) -> nn.Module:
    """Artifacts are saved, and the report measured, from the CPU (device-neutral); a no-op on CPU runs."""
    return model.to("cpu") if ctx.device.type != "cpu" else model


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
        name = f"{i}_{stage.name}"
        chain.append([stage.name, stage.config.model_dump()])
        step_fp = fingerprint(*chain)
        label = f"stage {i}/{len(stages)} {stage.name}"
        if store is not None and _reuse_finished(result, store, name, step_fp, label, say):
            continue
        if store is not None:
            store.state.invalidate_after(name)
            ctx.stage_index = i
            if is_main():
                claim_work_dir(ctx.stage_dir(stage.name), step_fp)
            barrier()  # stale checkpoints are gone before any rank looks for one
        say(label)
        if reseed:
            seed_everything(ctx.seed + i)
        result.model, record = _apply_timed(stage, result.model, ctx, f"stage {i} ({stage.name})", max_stage_seconds)
        result.records.append(record)
        row = {"model": name, **record.to_json()}
        result.rows.append(row)
        if store is not None:
            if is_main():
                _save_stage(store, result.model, record, name, stage.name, row, step_fp, ctx)
            barrier()
            result.final = name
    return result


def _apply_timed(stage: Stage[Any], model: nn.Module, ctx: RunContext, what: str,
                 max_stage_seconds: float | None) -> tuple[nn.Module, StageRecord]:
    """``stage.apply`` under the time budget, with out-of-memory errors named; the record gets the wall time."""
    batch_size = getattr(stage.config, "batch_size", None) or ctx.data.batch_size
    start = time.perf_counter()
    # A causal LM reads text through its own tokenizer: calibration, importance and training batches
    # tokenized any other way would be valid-looking ids that mean other words (SmolLM2 vs the default vocabulary).
    ctx = dataclasses.replace(ctx, data=with_model_tokens(ctx.data, model))
    with time_budget(max_stage_seconds) as budget, named_out_of_memory(what, batch_size):
        model, record = stage.apply(model, ctx)
    record.seconds = time.perf_counter() - start
    if budget is not None and budget.notes:
        record.status = "stopped at time budget"
        record.notes.extend(budget.notes)
    return model, record


def _reuse_finished(result: StagesRun, store: RunStore, name: str, step_fp: str, label: str,
                    say: Callable[[str], None]) -> bool:
    """Take stage ``name``'s finished model into ``result`` when it may be reused; False when it must run."""
    done = store.state.done(name, step_fp)
    reused = store.reuse(name, done, store.load_stage_model)
    if reused is None or done is None:
        return False
    say(f"{label}: reusing finished result")
    result.model = reused
    if is_main():  # measurements live on rank 0
        if not store.is_measured_now(done):
            done["measurements"] = [m.to_json() for m in store.remeasure(done, reused)]
            done["evaluate"] = store.evaluate_fingerprint
            store.state.save(name, done)
        else:
            store.measurements.extend(Measurement.from_json(m) for m in done["measurements"])
    result.rows.append(done["row"])
    result.final = name
    return True


def _save_stage(store: RunStore, model: nn.Module, record: StageRecord, name: str, kind: str, row: dict[str, Any],
                step_fp: str, ctx: RunContext) -> None:
    """Save and measure a stage's output and the extra models it reported, then mark the stage finished."""
    measured = [store.save_and_measure(_on_cpu(model, ctx), name, kind)]
    for extra_name, extra in record.extra_models:
        measured.append(store.save_and_measure(_on_cpu(extra, ctx), f"{name}_{extra_name}", kind))
    store.state.save(name, {"fingerprint": step_fp, "row": row, "measurements": [m.to_json() for m in measured],
                            "evaluate": store.evaluate_fingerprint})

"""The run loop: one function seeds, times, bounds, saves, measures and resumes every stage."""

from __future__ import annotations

import copy

import pytest
import torch

from slimtorch.core import STAGES, forward
from slimtorch.measure import EvaluateConfig
from slimtorch.run.loop import Step, StepOutput, run_stages, run_step
from slimtorch.run.resume import ResumeState
from slimtorch.run.store import RunStore, model_refs

EVALUATE = EvaluateConfig.model_validate({"latency": {"batch_sizes": [1], "repeats": 3, "warmup": 0}})


def _stages(*entries: tuple[str, dict]) -> list:
    return [STAGES.get(kind)(STAGES.get(kind).config_cls(**cfg)) for kind, cfg in entries]


PRUNE_THEN_FINETUNE = (("prune", {"sparsity": 0.5}), ("finetune", {"epochs": 1}))


def _store(out, data, events, resume=False) -> RunStore:
    return RunStore(out, data, EVALUATE, ResumeState(out, resume), frozenset({"mlp"}), events.append)


def test_without_a_store_the_loop_applies_times_and_records_but_saves_and_claims_nothing(mlp, ctx, tmp_path):
    ctx.teacher = copy.deepcopy(mlp)
    result = run_stages(mlp, _stages(*PRUNE_THEN_FINETUNE), ctx)
    assert [r.name for r in result.records] == ["prune", "finetune"]
    assert all(r.seconds > 0 for r in result.records)
    assert [row["model"] for row in result.rows] == ["1_prune", "2_finetune"]
    assert result.final is None and ctx.stage_index == 0
    assert not list(tmp_path.rglob("FINGERPRINT")) and not list(tmp_path.rglob("models"))  # no claims, no artifacts
    weights = [m.weight for m in result.model.modules() if isinstance(m, torch.nn.Linear)]
    assert sum(int((w == 0).sum()) for w in weights) > 0  # the prune masks held through fine-tuning


def test_the_loop_seeds_each_stage_so_a_rerun_gives_the_same_model(mlp, ctx):
    ctx.teacher = copy.deepcopy(mlp)
    x = ctx.data.example_batch(8)
    outputs = []
    for _ in range(2):
        torch.manual_seed(123 + len(outputs))  # different outside state: the loop's seeding must win
        model = run_stages(copy.deepcopy(mlp), _stages(("finetune", {"epochs": 1})), ctx).model
        outputs.append(forward(model.eval(), x).detach())
    torch.testing.assert_close(outputs[0], outputs[1])


def test_with_a_store_each_stage_is_saved_measured_and_reused_on_resume(mlp, ctx, tmp_path):
    ctx.teacher = copy.deepcopy(mlp)
    out, events = tmp_path / "run", []
    store = _store(out, ctx.data, events)
    first = run_stages(copy.deepcopy(mlp), _stages(*PRUNE_THEN_FINETUNE), ctx, store=store, depends_on=["recipe"], events=events.append)
    assert first.final == "2_finetune" and ctx.stage_index == 2
    assert [m.name for m in store.measurements] == ["1_prune", "2_finetune"]
    assert [m.stage for m in store.measurements] == ["prune", "finetune"]
    assert (out / "models" / "2_finetune").is_dir() and (ctx.work_dir / "01_prune" / "FINGERPRINT").is_file()
    assert list(store.state.steps) == ["1_prune", "2_finetune"]

    events.clear()
    again = _store(out, ctx.data, events, resume=True)
    second = run_stages(copy.deepcopy(mlp), _stages(*PRUNE_THEN_FINETUNE), ctx, store=again, depends_on=["recipe"], events=events.append)
    assert second.records == [] and second.rows == first.rows and second.final == "2_finetune"
    assert events == ["stage 1/2 prune: reusing finished result", "stage 2/2 finetune: reusing finished result"]
    assert [m.to_json() for m in again.measurements] == [m.to_json() for m in store.measurements]
    x = ctx.data.example_batch(8)
    torch.testing.assert_close(forward(second.model.eval(), x), forward(first.model.eval(), x))


def test_a_changed_stage_runs_again_from_there_and_a_changed_prefix_reruns_all(mlp, ctx, tmp_path):
    ctx.teacher = copy.deepcopy(mlp)
    out, events = tmp_path / "run", []
    run_stages(copy.deepcopy(mlp), _stages(*PRUNE_THEN_FINETUNE), ctx, store=_store(out, ctx.data, events), depends_on=["a"])
    changed = (PRUNE_THEN_FINETUNE[0], ("finetune", {"epochs": 2}))
    events.clear()
    result = run_stages(copy.deepcopy(mlp), _stages(*changed), ctx, store=_store(out, ctx.data, events, resume=True),
                        depends_on=["a"], events=events.append)
    assert [r.name for r in result.records] == ["finetune"]
    assert events == ["stage 1/2 prune: reusing finished result", "stage 2/2 finetune"]
    events.clear()
    result = run_stages(copy.deepcopy(mlp), _stages(*changed), ctx, store=_store(out, ctx.data, events, resume=True),
                        depends_on=["b"], events=events.append)
    assert [r.name for r in result.records] == ["prune", "finetune"]


def test_a_damaged_finished_model_is_run_again(mlp, ctx, tmp_path):
    ctx.teacher = copy.deepcopy(mlp)
    out, events = tmp_path / "run", []
    stages = _stages(("prune", {"sparsity": 0.5}))
    run_stages(copy.deepcopy(mlp), stages, ctx, store=_store(out, ctx.data, events))
    for f in (out / "models" / "1_prune").iterdir():
        f.write_bytes(b"garbage")
    events.clear()
    result = run_stages(copy.deepcopy(mlp), stages, ctx, store=_store(out, ctx.data, events, resume=True), events=events.append)
    assert [r.name for r in result.records] == ["prune"]
    assert "damaged" in events[0] and events[1] == "stage 1/1 prune"


def test_a_stage_over_its_time_budget_is_recorded_as_stopped(mlp, ctx):
    ctx.teacher = copy.deepcopy(mlp)
    result = run_stages(mlp, _stages(("finetune", {"epochs": 50})), ctx, max_stage_seconds=1e-9)
    (record,) = result.records
    assert record.status == "stopped at time budget" and any("max_stage_seconds" in n and "ran out" in n for n in record.notes)
    assert record.details["epochs_run"] < 50


def test_any_step_is_saved_measured_and_reused_by_the_same_loop_and_a_change_invalidates_what_follows(mlp, ctx, tmp_path):
    out, events, calls = tmp_path / "run", [], []

    def steps(store, version):
        def make() -> StepOutput:
            calls.append("model")
            return StepOutput(model=copy.deepcopy(mlp), row={"name": "train_model"})

        def choose() -> StepOutput:
            calls.append("choice")
            return StepOutput(output={"choice": version})

        return [Step(name="model", depends_on=["m"], run=make, kind="teacher", load=store.load, before_measure=store.set_baseline,
                     work_dir=tmp_path / "work" / "model"),
                Step(name="choice", depends_on=["c", version], run=choose)]

    store = _store(out, ctx.data, events)
    first = [run_step(step, store, events.append) for step in steps(store, 1)]
    assert calls == ["model", "choice"] and first[1].output == {"choice": 1} and first[0].row == {"name": "train_model"}
    assert [m.name for m in store.measurements] == ["model"] and store.measurements[0].agreement == 1.0
    entries = store.state.steps
    assert set(entries["model"]) == set(entries["choice"])  # one entry shape for a model step and an output step
    assert entries["choice"]["measurements"] == [] and (tmp_path / "work" / "model" / "FINGERPRINT").is_file()

    calls.clear()
    again = _store(out, ctx.data, events, resume=True)
    reused = [run_step(step, again, events.append) for step in steps(again, 1)]
    assert calls == [] and [d.ran for d in reused] == [None, None]  # nothing ran again
    assert reused[1].output == {"choice": 1} and reused[0].row == {"name": "train_model"}
    assert [m.to_json() for m in again.measurements] == [m.to_json() for m in store.measurements]

    changed = _store(out, ctx.data, events, resume=True)
    for step in steps(changed, 2):
        run_step(step, changed, events.append)
    assert calls == ["choice"] and changed.state.steps["choice"]["output"] == {"choice": 2}


def test_model_refs_finds_every_model_reference_of_a_recipe():
    recipe = {"teacher": [{"model": "mlp"}, {"model": "pkg.mod:build"}], "student": {"model": "hf:dir"},
              "stages": [{"distill": {"assistant": {"model": "cnn"}}}], "name": "model"}
    assert model_refs(recipe) == {"mlp", "pkg.mod:build", "hf:dir", "cnn"}


@pytest.mark.parametrize("kind", ["prune", "finetune"])
def test_the_loop_names_out_of_memory_after_the_stage(kind, mlp, ctx, monkeypatch):
    from slimtorch.errors import TrainingError

    stage = _stages((kind, {"sparsity": 0.5} if kind == "prune" else {"epochs": 1}))[0]

    def runs_out(model, ctx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(stage, "apply", runs_out)
    with pytest.raises(TrainingError, match=rf"stage 1 \({kind}\)"):
        run_stages(mlp, [stage], ctx)


def test_a_causal_lm_stage_reads_text_in_the_models_own_tokens(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from slimtorch.core import RunContext
    from slimtorch.data import build_data
    from slimtorch.measure.llm import causal_lm_of
    from slimtorch.models import build_model
    from tests.tiny_llm import write_text, write_tiny_gguf

    monkeypatch.setenv("SLIMTORCH_CACHE", str(tmp_path / "cache"))
    model = build_model(f"gguf:{write_tiny_gguf(tmp_path / 'tiny.gguf')}")
    data = build_data("text", args={"path": str(write_text(tmp_path / "text.txt", repeat=1))})
    stage = _stages(("finetune", {"epochs": 1}))[0]
    seen = {}

    def records_its_batch(m, ctx):
        (x, _), (text, _) = next(iter(ctx.data.loader("train"))), ctx.data.train[0]
        seen["ids"], seen["text"] = x["input_ids"][0], text
        return m, stage.record()

    monkeypatch.setattr(stage, "apply", records_its_batch)
    run_stages(model, [stage], RunContext(data=data, work_dir=tmp_path / "work"))
    own = causal_lm_of(model).tokenizer(seen["text"])["input_ids"]
    assert seen["ids"][: len(own)].tolist() == own  # not the default vocabulary's ids for the same words

"""Resource limits (`resources:`): models over budget fail before work starts; time budgets stop training."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from slimtorch.core import RunContext
from slimtorch.errors import RecipeError
from slimtorch.models import build_model
from slimtorch.recipe.schema import ResourceSpec
from slimtorch.resources import check_model_fits, model_memory_mb, over_time_budget, time_budget
from slimtorch.run.pipeline import compress
from slimtorch.train import TrainConfig, cross_entropy, fit

HERE = Path(__file__).resolve().parent
EVAL = {"latency": {"batch_sizes": [1], "repeats": 3, "warmup": 0}, "noise_levels": [0.1]}
TINY = {"source": "user_code:tiny", "batch_size": 16}


@pytest.fixture(autouse=True)
def _user_code(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def _recipe(**parts) -> dict:
    return {"name": "res", "data": TINY, "evaluate": EVAL, **parts}


def test_memory_estimate_counts_training_state():
    model = build_model("mlp", {"hidden": [64]}, input_shape=(8,), num_classes=3)
    weights_mb = sum(p.numel() * 4 for p in model.parameters()) / 1e6  # decimal MB, the unit of every size slimtorch prints
    assert model_memory_mb(model, training=False) == pytest.approx(weights_mb)
    assert model_memory_mb(model, training=True) == pytest.approx(4 * weights_mb)
    limit = ResourceSpec(max_memory_mb=2 * weights_mb)
    check_model_fits(model, limit, "mlp")  # measuring only: fits
    with pytest.raises(RecipeError, match=r"to train \(weights, gradients and AdamW state"):
        check_model_fits(model, limit, "mlp", training=True)


def test_teacher_over_max_params_fails_before_any_file_is_written(tmp_path):
    recipe = _recipe(teacher={"model": "mlp", "args": {"hidden": [64]}, "train": {"epochs": 50}}, resources={"max_params": 100})
    start = time.perf_counter()
    with pytest.raises(RecipeError, match=r"model 'mlp' has 771 parameters, over resources\.max_params=100"):
        compress(recipe, tmp_path / "o")
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "o" / "models").exists() and not list((tmp_path / "o").rglob("meta.json"))  # no model, no checkpoint


def test_explicit_student_is_checked_before_the_teacher_trains(tmp_path):
    recipe = _recipe(teacher={"model": "mlp", "args": {"hidden": [8]}, "train": {"epochs": 50}},
                     student={"model": "mlp", "args": {"hidden": [512]}}, stages=[{"distill": {"epochs": 1}}],
                     resources={"max_params": 2000})
    with pytest.raises(RecipeError, match=r"model 'mlp' has 6,147 parameters, over resources\.max_params=2,000"):
        compress(recipe, tmp_path / "o")
    assert not list((tmp_path / "o").rglob("meta.json"))  # the teacher never finished an epoch


def test_auto_student_is_checked_for_training_memory_before_the_teacher_trains(tmp_path):
    teacher = build_model("mlp", {"hidden": [64]}, input_shape=(8,), num_classes=3)
    weights_mb = model_memory_mb(teacher, training=False)
    # The untrained teacher fits (weights only); the same-size auto student must also be trained: 4x.
    recipe = _recipe(teacher={"model": "mlp", "args": {"hidden": [64]}}, student={"auto": {"width": 1.0}},
                     stages=[{"distill": {"epochs": 1}}], resources={"max_memory_mb": 2 * weights_mb})
    with pytest.raises(RecipeError, match=r"model 'student \(auto: width 1, depth 1\)' needs about .* MB to train"):
        compress(recipe, tmp_path / "o")
    assert not (tmp_path / "o" / "models").exists()


def test_copied_teacher_is_checked_as_a_trained_student(tmp_path):
    teacher = build_model("mlp", {"hidden": [64]}, input_shape=(8,), num_classes=3)
    weights_mb = model_memory_mb(teacher, training=False)
    recipe = _recipe(teacher={"model": "mlp", "args": {"hidden": [64]}}, stages=[{"finetune": {"epochs": 1}}],
                     resources={"max_memory_mb": 2 * weights_mb})
    with pytest.raises(RecipeError, match=r"model 'student \(a copy of the teacher\)' needs about .* MB to train"):
        compress(recipe, tmp_path / "o")
    # Without a training stage the copy is only measured, and fits.
    compress({**recipe, "stages": [{"quantize": {"mode": "dynamic_int8", "runtime": "torch"}}]}, tmp_path / "ok")


def test_fit_stops_mid_epoch_at_the_time_budget_with_a_note(digits, tmp_path):
    model = build_model("mlp", {"hidden": [16]}, input_shape=digits.input_shape, num_classes=10)
    ctx = RunContext(data=digits, work_dir=tmp_path)
    loader = digits.loader("train")
    with time_budget(0.25) as budget:
        result = fit(model, cross_entropy, loader, TrainConfig(epochs=100), ctx, checkpoint_dir=tmp_path / "ck",
                     after_step=lambda m: time.sleep(0.05))
        assert over_time_budget() is budget
    assert over_time_budget() is None  # the budget ends with its block
    assert result.stopped_by_time_budget and 1 <= result.steps < len(loader) and result.epochs_run == 1
    assert budget.notes == [(f"train: stopped in epoch 0 after step {result.steps} because resources.max_stage_seconds=0.25 s ran out; "
                             "the best weights so far were kept. Raise the limit or lower the epochs.")]
    meta = json.loads((tmp_path / "ck" / "last" / "meta.json").read_text())
    assert meta["steps"] == result.steps  # the partial epoch is evaluated and checkpointed


def test_an_exhausted_budget_still_takes_one_step(digits, tmp_path):
    """Set-up can eat a small budget (the optimizer's first import takes seconds on a busy machine): train at least one step."""
    model = build_model("mlp", {"hidden": [8]}, input_shape=digits.input_shape, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with time_budget(0.0) as budget:
        result = fit(model, cross_entropy, digits.loader("train"), TrainConfig(epochs=5), RunContext(data=digits, work_dir=tmp_path))
    assert result.steps == 1 and result.epochs_run == 1 and result.stopped_by_time_budget and "after step 1" in budget.notes[0]
    assert any((before[k] != v).any() for k, v in model.state_dict().items())


def test_no_budget_means_no_stop(digits, tmp_path):
    model = build_model("mlp", {"hidden": [8]}, input_shape=digits.input_shape, num_classes=10)
    with time_budget(None) as budget:
        result = fit(model, cross_entropy, digits.loader("train"), TrainConfig(epochs=2), RunContext(data=digits, work_dir=tmp_path))
    assert budget is None and not result.stopped_by_time_budget and result.epochs_run == 2


def test_stage_and_teacher_training_stop_at_max_stage_seconds(tmp_path):
    slow = {"model": "slow_models:mlp", "args": {"hidden": [8], "delay_s": 0.01, "input_shape": [8], "num_classes": 3}}
    recipe = _recipe(teacher={**slow, "train": {"epochs": 10000}}, stages=[{"finetune": {"epochs": 10000}}],
                     resources={"max_stage_seconds": 0.5})
    start = time.perf_counter()
    result = compress(recipe, tmp_path / "o")
    assert time.perf_counter() - start < 60
    rows = {row["name"]: row for row in result.report.to_json()["stages"]}
    for name in ("train_teacher", "finetune"):
        row = rows[name]
        assert row["status"] == "stopped at time budget", row
        assert any("resources.max_stage_seconds=0.5 s ran out" in note for note in row["notes"]), row
    assert rows["finetune"]["details"]["epochs_run"] < 10000
    assert "stopped at time budget" in (tmp_path / "o" / "report.md").read_text()

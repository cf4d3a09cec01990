"""Training runs until it has learned: convergence stopping, schedules, ``lr: auto`` and the report note."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from slimtorch.core import RunContext
from slimtorch.measure.accuracy import task_metric
from slimtorch.models import build_model
from slimtorch.train import FinetuneConfig, FinetuneStage, TrainConfig, convergence_note, cross_entropy, fit
from slimtorch.train.loop import FitResult, converged_at, loss_improvements
from slimtorch.train.lr_range import lr_range_test
from slimtorch.train.schedule import LRSchedule, lr_factor


def _model(digits, hidden=(32,)):
    torch.manual_seed(0)
    return build_model("mlp", {"hidden": list(hidden)}, input_shape=digits.input_shape, num_classes=10)


def _history(vals, losses):
    return [{"epoch": i, "val": v, "loss": l} for i, (v, l) in enumerate(zip(vals, losses))]


def test_converged_only_when_both_val_and_loss_have_stalled_for_patience_epochs():
    flat_val = [0.5, 0.9, 0.9, 0.9, 0.9]
    assert converged_at(_history(flat_val, [1.0, 0.5, 0.3, 0.2, 0.1]), patience=3, min_loss_improvement=0.01) is None
    assert converged_at(_history(flat_val, [1.0, 0.5, 0.5, 0.5, 0.5]), patience=3, min_loss_improvement=0.01) == 1
    # a loss that keeps halving near zero has stopped mattering (absolute tolerance 1e-4)
    assert converged_at(_history(flat_val, [1.0, 0.5, 4e-5, 2e-5, 1e-5]), patience=2, min_loss_improvement=0.01) == 2


def test_loss_improvements_use_relative_and_absolute_thresholds():
    assert loss_improvements([2.0, 1.995, 1.9, 1.89], 0.01) == [0, 2]


def test_fit_stops_once_converged_and_keeps_best_weights(digits, ctx):
    model = _model(digits)
    result = fit(model, cross_entropy, digits.loader("train", shuffle=True), TrainConfig(epochs=200, lr=1e-2, patience=3), ctx,
                 evaluate=lambda m: task_metric(m, digits, "val"))
    assert result.stop_reason == "converged" and result.converged
    assert result.epochs_run < 200 and result.epochs_run == result.converged_epoch + 3 + 1
    assert task_metric(model, digits, "val") == pytest.approx(result.best_metric)
    assert convergence_note(result, "train") is None


def test_patience_none_runs_the_whole_ceiling_and_the_note_says_it_was_still_learning(digits, ctx):
    model = _model(digits)
    cfg = TrainConfig(epochs=4, lr=1e-3, patience=None)
    result = fit(model, cross_entropy, digits.loader("train", shuffle=True), cfg, ctx, evaluate=lambda m: task_metric(m, digits, "val"))
    assert result.epochs_run == 4 and result.stop_reason == "ceiling" and result.converged_epoch is None
    note = convergence_note(result, "finetune")
    assert note is not None and note.startswith("finetune did not converge: it stopped at its 4-epoch ceiling")
    assert "Raise `epochs`" in note and "training loss was still falling" in note


def test_finetune_stage_records_convergence_in_details_and_notes(digits, ctx):
    _, record = FinetuneStage(FinetuneConfig(epochs=3, lr=1e-3)).apply(_model(digits), ctx)
    assert record.details["epochs_run"] == 3 and record.details["stop_reason"] == "ceiling"
    assert record.details["converged_epoch"] is None
    assert any("did not converge" in n for n in record.notes)


def test_lr_factor_per_schedule():
    kw = {"total_steps": 100, "warmup_steps": 10, "floor": 0.1}
    assert [lr_factor("constant", s, **kw) for s in (0, 4, 9, 50, 99)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    cos = [lr_factor("cosine", s, **kw) for s in range(100)]
    assert cos[10] == 1.0 and cos[-1] == pytest.approx(0.1, abs=1e-3) and min(cos) >= 0.1
    one = [lr_factor("onecycle", s, **kw) for s in range(100)]
    assert max(one) == pytest.approx(1.0) and one.index(max(one)) == 29 and min(one) >= 0.1


def test_plateau_halves_after_patience_down_to_the_floor_and_its_state_round_trips():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LRSchedule(opt, "plateau", 0.1, total_steps=100, warmup_steps=0, floor=0.25, plateau_patience=2)
    for metric in (0.5, 0.5, 0.5):
        sched.end_epoch(metric)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    for _ in range(6):
        sched.end_epoch(0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)  # never below lr * floor
    other = LRSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "plateau", 0.1, total_steps=100,
                       warmup_steps=0, floor=0.25, plateau_patience=2)
    other.load_state_dict(sched.state_dict())
    assert other.lr == sched.lr and other.state_dict() == sched.state_dict()


@pytest.mark.parametrize("schedule", ["cosine", "plateau", "onecycle"])
def test_resume_equals_uninterrupted_for_every_schedule(digits, tmp_path, schedule):
    cfg = TrainConfig(epochs=3, lr=3e-3, schedule=schedule, warmup_epochs=0.5)
    loader = digits.loader("train", shuffle=True)
    ctx = RunContext(data=digits, seed=0, work_dir=tmp_path)
    straight = _model(digits)
    fit(straight, cross_entropy, loader, cfg, ctx, checkpoint_dir=tmp_path / "a", evaluate=lambda m: task_metric(m, digits, "val"))
    steps = []

    def crash(m):
        steps.append(1)
        if len(steps) == len(loader) * 2 + 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_model(digits), cross_entropy, loader, cfg, ctx, checkpoint_dir=tmp_path / "b", after_step=crash,
            evaluate=lambda m: task_metric(m, digits, "val"))
    resumed = _model(digits)
    result = fit(resumed, cross_entropy, loader, cfg, ctx, checkpoint_dir=tmp_path / "b", evaluate=lambda m: task_metric(m, digits, "val"))
    assert result.resumed_from_epoch == 2
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_lr_range_test_finds_a_sane_rate_and_leaves_the_model_untouched(digits):
    model = _model(digits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    found = lr_range_test(model, cross_entropy, digits.loader("train", shuffle=True), list(model.parameters()), steps=60)
    assert 1e-4 <= found.lr <= 1e-1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_lr_auto_trains_and_records_the_rate(digits, ctx):
    model = _model(digits)
    result = fit(model, cross_entropy, digits.loader("train", shuffle=True), TrainConfig(epochs=3, lr="auto"), ctx,
                 evaluate=lambda m: task_metric(m, digits, "val"))
    assert 1e-4 <= result.lr <= 1e-1 and result.lr != 1e-3
    assert result.best_metric > 0.85


def test_bad_lr_is_refused_with_the_fix():
    with pytest.raises(ValidationError, match="lr must be a positive number or 'auto'"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValidationError):
        TrainConfig(lr="fast")
    with pytest.raises(ValidationError):
        TrainConfig(schedule="linear")


def test_note_is_silent_when_converged_or_too_short():
    r = FitResult(best_metric=1.0, best_epoch=0, epochs_run=1, steps=1, history=[{"epoch": 0, "loss": 1.0, "val": 1.0}])
    assert convergence_note(r, "x") is None
    r = FitResult(best_metric=1.0, best_epoch=0, epochs_run=12, steps=12, stop_reason="ceiling", epochs_ceiling=12,
                  history=[{"epoch": i, "loss": 0.5, "val": 1.0 if i == 0 else 0.9} for i in range(12)])
    assert convergence_note(r, "x") is None  # hit the ceiling, but flat for the last epochs: nothing to suggest

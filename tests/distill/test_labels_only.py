"""distill.compare_labels_only: the control experiment (the same student trained without its teacher) beside the distilled one."""

from __future__ import annotations

import pytest

from slimtorch.errors import RecipeError
from slimtorch.run.pipeline import compress

RECIPE = {
    "name": "control", "seed": 0,
    "data": {"source": "digits", "batch_size": 64, "labeled_fraction": 0.1},  # scenario 2: few labels, where a teacher helps
    "teacher": {"model": "mlp", "args": {"hidden": [128]}, "train": {"epochs": 8, "lr": 0.003}},
    "student": {"model": "mlp", "args": {"hidden": [32]}},
    "stages": [{"distill": {"temperature": 4.0, "alpha": 0.3, "epochs": 6, "lr": 0.003, "compare_labels_only": True}}],
    "evaluate": {"latency": {"batch_sizes": [1], "repeats": 3, "warmup": 0}, "noise_levels": []},
}


def test_the_control_is_trained_from_the_same_start_and_reported_beside_the_distilled_student(tmp_path):
    result = compress(RECIPE, tmp_path / "run")
    models = {m.name: m for m in result.report.models}
    assert list(models) == ["teacher", "1_distill", "1_distill_labels_only"]
    assert models["1_distill_labels_only"].params == models["1_distill"].params
    row = next(s for s in result.report.stages if s.name == "distill")
    control = row.details["labels_only"]
    assert 0 < control["val_accuracy"] <= 1 and control["epochs_run"] >= 1
    (note,) = [n for n in row.notes if n.startswith("control without the teacher")]
    assert f"{100 * control['val_accuracy']:.2f}% against" in note and "points from distillation" in note
    # different training (soft targets vs labels) from one start: different models, both well above chance
    assert models["1_distill"].metrics["accuracy"] > 0.5 and models["1_distill_labels_only"].metrics["accuracy"] > 0.3


def test_the_control_needs_class_labels_and_the_kd_loss(tmp_path):
    recipe = {**RECIPE, "stages": [{"distill": {"loss": "mse", "epochs": 1, "compare_labels_only": True}}]}
    with pytest.raises(RecipeError, match=r"compare_labels_only trains a control on class labels; it needs loss: kd .*loss 'mse'"):
        compress(recipe, tmp_path / "run")

"""LoraStage on a pruned digits MLP: recovers accuracy with few trained weights, keeps sparsity, clear errors."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.errors import DataError
from slimtorch.lora import LoraConfig, LoraStage
from slimtorch.measure.accuracy import task_metric


def _zeros(model) -> int:
    return sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_lora_recovers_pruned_model_with_teacher(pruned, teacher, digits, tmp_path):
    ctx = RunContext(data=digits, teacher=teacher, work_dir=tmp_path)
    zeros_before = _zeros(pruned)
    before = task_metric(pruned, digits, "val")
    merged, record = LoraStage(LoraConfig(rank=2, epochs=2)).apply(pruned, ctx)
    d = record.details
    assert d["metric_before"] == pytest.approx(before)
    assert d["metric_after"] > before  # recovered something
    assert d["trainable_params"] < 0.1 * d["total_params"]
    assert d["merge_max_abs_diff"] < 1e-5
    assert "distillation" in d["objective"]
    full = d["full_finetune"]
    assert full["steps"] == d["steps"] and full["trainable_params"] == d["total_params"]
    assert record.extra_models[0][0] == "full_finetune"
    assert _zeros(merged) == zeros_before  # updates of pruned layers are masked: same zeros
    artifact.save(merged, tmp_path / "m")
    x = digits.example_batch(8)
    torch.testing.assert_close(artifact.load(tmp_path / "m")(x), merged(x))


def test_lora_without_teacher_trains_on_labels(pruned, digits, tmp_path):
    ctx = RunContext(data=digits, work_dir=tmp_path)
    _, record = LoraStage(LoraConfig(rank=2, epochs=1, compare_full_finetune=False, keep_sparsity=False)).apply(pruned, ctx)
    assert record.details["objective"] == "cross-entropy on labels"
    assert "full_finetune" not in record.details and record.notes == ["lora.keep_sparsity is false: the merged model is dense again."]


def test_embedding_task_without_teacher_is_a_data_error(pruned, digits, tmp_path):
    data = type(digits)(**{**digits.__dict__, "task": "embedding"})
    with pytest.raises(DataError, match="needs a teacher"):
        LoraStage(LoraConfig()).apply(pruned, RunContext(data=data, work_dir=tmp_path))


def test_bad_settings_are_rejected():
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        LoraConfig(rank=0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        LoraConfig(r=8)

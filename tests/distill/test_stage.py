"""The distill stage end to end on digits: scenarios, multi-teacher, TA chain, feature KD, errors, resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from slimtorch.core import RunContext
from slimtorch.data import DataBundle, build_data
from slimtorch.data.sources import Unlabeled
from slimtorch.distill import DistillConfig, DistillStage, derive_student
from slimtorch.errors import RecipeError, ShapeMismatchError
from slimtorch.models import build_model
from tests.distill.conftest import test_accuracy


def _student(data: DataBundle, hidden: list[int] | None = None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": hidden or [32]}, input_shape=data.input_shape, num_classes=10)


def _run(cfg: DistillConfig, model: torch.nn.Module, data: DataBundle, teacher: torch.nn.Module, tmp: Path, **kw):
    if "lr" not in cfg.model_fields_set:
        cfg = cfg.model_copy(update={"lr": 1e-2})  # few epochs in tests: a higher learning rate
    return DistillStage(cfg).apply(model, RunContext(data=data, teacher=teacher, work_dir=tmp, **kw))


def test_scenario1_student_learns_and_records(digits: DataBundle, digits_teacher: torch.nn.Module, tmp_path: Path) -> None:
    model, record = _run(DistillConfig(temperature=2.0, alpha=0.5, epochs=8), _student(digits), digits, digits_teacher, tmp_path)
    assert test_accuracy(model, digits) > 0.85
    assert record.name == "distill" and record.details["scenario"] == 1
    (hop,) = record.details["hops"]
    assert (hop["from"], hop["to"], hop["epochs_run"], hop["cached_teacher"]) == ("teacher", "student", 8, True)
    assert hop["val_accuracy"] == max(h["val"] for h in hop["history"])
    assert (tmp_path / "00_distill" / "student" / "best" / "model.safetensors").exists()
    assert record.config["temperature"] == 2.0 and record.to_json()["details"]["alpha"] == 0.5


def test_resume_continues_from_checkpoint(digits: DataBundle, digits_teacher: torch.nn.Module, tmp_path: Path) -> None:
    cfg = DistillConfig(epochs=3)
    first, _ = _run(cfg, _student(digits), digits, digits_teacher, tmp_path)
    second, record = _run(cfg, _student(digits, seed=5), digits, digits_teacher, tmp_path)
    assert record.details["hops"][0]["resumed_from_epoch"] == 3
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def _hidden_labels_scrambled(data: DataBundle) -> DataBundle:
    """The same bundle whose transfer examples carry different (still hidden) labels underneath."""
    subset: Subset = data.transfer.dataset  # type: ignore[union-attr]
    base: TensorDataset = subset.dataset  # type: ignore[assignment]
    y = base.tensors[1].clone()
    y[subset.indices] = (y[subset.indices] + 3) % 10
    scrambled = Unlabeled(Subset(TensorDataset(base.tensors[0], y), subset.indices))
    return dataclasses.replace(data, transfer=scrambled)


def test_scenario2_never_reads_hidden_labels(digits_teacher: torch.nn.Module, tmp_path: Path) -> None:
    data = build_data("digits", seed=0, labeled_fraction=0.1)
    cfg = DistillConfig(temperature=2.0, alpha=0.5, epochs=2)
    a, record = _run(cfg, _student(data), data, digits_teacher, tmp_path / "a")
    b, _ = _run(cfg, _student(data), _hidden_labels_scrambled(data), digits_teacher, tmp_path / "b")
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    assert record.details["scenario"] == 2
    assert record.details["transfer_unlabeled"] == len(data.transfer) > 9 * record.details["train_labeled"] * 0.9


def test_scenario2_soft_targets_beat_labels_only(digits_teacher: torch.nn.Module, tmp_path: Path) -> None:
    data = build_data("digits", seed=0, labeled_fraction=0.1)
    kd, _ = _run(DistillConfig(temperature=2.0, alpha=0.1, epochs=10), _student(data), data, digits_teacher, tmp_path / "kd")
    labels_only, record = _run(DistillConfig(alpha=1.0, epochs=10), _student(data), data, digits_teacher, tmp_path / "ce")
    assert test_accuracy(kd, data) > test_accuracy(labels_only, data) + 0.05
    assert any("labels only" in n for n in record.notes)


def test_multi_teacher_weights_select_and_mix(digits: DataBundle, digits_teacher: torch.nn.Module,
                                              digits_cnn_teacher: torch.nn.Module, tmp_path: Path) -> None:
    cfg = DistillConfig(epochs=2)
    single, _ = _run(cfg, _student(digits), digits, digits_teacher, tmp_path / "one")
    teachers = [digits_teacher, digits_cnn_teacher]
    weighted = cfg.model_copy(update={"teacher_weights": [1.0, 0.0]})
    first_only, record = _run(weighted, _student(digits), digits, digits_teacher, tmp_path / "w", teachers=teachers)
    for p, q in zip(single.state_dict().values(), first_only.state_dict().values()):
        torch.testing.assert_close(p, q)
    mixed, record = _run(cfg, _student(digits), digits, digits_teacher, tmp_path / "mix", teachers=teachers)
    assert record.details["teachers"] == 2 and record.details["teacher_weights"] == [1.0, 1.0]
    assert record.details["hops"][0]["from"] == "2 teachers"
    assert not torch.equal(mixed.net[1].weight, single.net[1].weight)


def test_teaching_assistant_chain_runs_in_order(digits: DataBundle, digits_teacher: torch.nn.Module, tmp_path: Path) -> None:
    cfg = DistillConfig(epochs=4, assistant={"model": "mlp", "args": {"hidden": [64]}, "epochs": 6})
    model, record = _run(cfg, _student(digits), digits, digits_teacher, tmp_path)
    first, second = record.details["hops"]
    assert (first["from"], first["to"], second["from"], second["to"]) == ("teacher", "assistant", "assistant", "student")
    assert (first["epochs_run"], second["epochs_run"]) == (6, 4)
    (name, assistant), = record.extra_models
    assert name == "assistant"
    n_assistant = sum(p.numel() for p in assistant.parameters())
    assert second["teacher_params"] == n_assistant == first["student_params"]
    assert first["teacher_params"] == sum(p.numel() for p in digits_teacher.parameters())
    assert test_accuracy(assistant, digits) > 0.85 and test_accuracy(model, digits) > 0.8
    assert assistant.slimtorch_spec["ref"] == "mlp"


def test_feature_kd_linear_adapter(digits: DataBundle, digits_teacher: torch.nn.Module, tmp_path: Path) -> None:
    cfg = DistillConfig(epochs=4, features=[{"student": "net.2", "teacher": "net.2", "weight": 0.5}])
    model, record = _run(cfg, _student(digits), digits, digits_teacher, tmp_path)
    assert record.details["hops"][0]["adapter_params"] == 32 * 256 + 256
    assert not any(m._forward_hooks for m in model.modules())  # taps removed from the returned student
    assert not any(m._forward_hooks for m in digits_teacher.modules())
    assert test_accuracy(model, digits) > 0.8


def test_feature_kd_conv_adapter(digits: DataBundle, digits_cnn_teacher: torch.nn.Module, tmp_path: Path) -> None:
    student = derive_student(digits_cnn_teacher, width=0.5, depth=1.0)
    cfg = DistillConfig(epochs=2, features=[{"student": "features.5", "teacher": "features.5"}])
    _, record = _run(cfg, student, digits, digits_cnn_teacher, tmp_path)
    assert record.details["hops"][0]["adapter_params"] == 8 * 16 + 16  # 1×1 conv 8 → 16 channels


def test_cached_and_live_teacher_agree(digits: DataBundle, digits_teacher: torch.nn.Module, tmp_path: Path) -> None:
    cached, r1 = _run(DistillConfig(epochs=1), _student(digits), digits, digits_teacher, tmp_path / "c")
    live, r2 = _run(DistillConfig(epochs=1, cache_teacher=False), _student(digits), digits, digits_teacher, tmp_path / "l")
    assert r1.details["hops"][0]["cached_teacher"] and not r2.details["hops"][0]["cached_teacher"]
    for p, q in zip(cached.state_dict().values(), live.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4)


def test_output_shape_mismatch_names_both_shapes(digits: DataBundle, digits_teacher: torch.nn.Module, tmp_path: Path) -> None:
    wrong = build_model("mlp", {"hidden": [8]}, input_shape=digits.input_shape, num_classes=5)
    with pytest.raises(ShapeMismatchError, match=r"teacher 0 outputs shape \(2, 10\) but the student outputs \(2, 5\)"):
        _run(DistillConfig(epochs=1), wrong, digits, digits_teacher, tmp_path)


def test_missing_teacher_and_wrong_weight_count(digits: DataBundle, digits_teacher: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="distill needs a trained teacher"):
        _run(DistillConfig(epochs=1), _student(digits), digits, None, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match="teacher_weights has 2 entries but the run has 1 teacher"):
        _run(DistillConfig(epochs=1, teacher_weights=[1, 2]), _student(digits), digits, digits_teacher, tmp_path)


def test_kd_loss_refused_for_embeddings(digits: DataBundle, digits_teacher: torch.nn.Module, tmp_path: Path) -> None:
    as_embedding = dataclasses.replace(digits, task="embedding")
    with pytest.raises(RecipeError, match="loss 'kd' needs class logits.*Use loss: cosine"):
        _run(DistillConfig(epochs=1), _student(digits), as_embedding, digits_teacher, tmp_path)

"""Auto-student derivation for built-ins and Hugging Face encoders, with artifact round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimtorch import artifact
from slimtorch.distill import derive_student
from slimtorch.distill.auto_student import kept_layers
from slimtorch.errors import RecipeError, UnsupportedModuleError
from slimtorch.models import build_model


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_kept_layers_every_other() -> None:
    assert kept_layers(6, 0.5) == [0, 2, 4]
    assert kept_layers(12, 0.5) == [0, 2, 4, 6, 8, 10]
    assert kept_layers(2, 0.5) == [0]
    assert kept_layers(3, 1.0) == [0, 1, 2]


@pytest.mark.parametrize(
    ("ref", "args", "shape", "expected"),
    [("mlp", {"hidden": [1200, 1200]}, (1, 8, 8), {"hidden": [300]}),
     ("cnn", {"channels": [16, 32, 64, 64]}, (1, 8, 8), {"channels": [4, 8], "hidden": 16}),
     ("cnn", {"channels": [16, 32]}, (1, 40), {"channels": [4], "hidden": 16}),
     ("resnet", {"widths": [16, 32], "blocks": [2, 2]}, (3, 16, 16), {"widths": [4, 8], "blocks": [1, 1]})],
)
def test_builtin_student_is_smaller_same_io_and_round_trips(ref: str, args: dict, shape: tuple, expected: dict, tmp_path: Path) -> None:
    teacher = build_model(ref, args, input_shape=shape, num_classes=10)
    student = derive_student(teacher, width=0.25, depth=0.5)
    assert student.slimtorch_spec["ref"] == ref
    assert {k: student.slimtorch_spec["args"][k] for k in expected} == expected
    x = torch.randn(3, *shape)
    assert student.eval()(x).shape == teacher.eval()(x).shape == (3, 10)
    assert _params(student) < _params(teacher) / 4
    again = artifact.load(artifact.save(student, tmp_path / "s"))
    torch.testing.assert_close(again(x), student(x))


def test_width_and_depth_must_be_fractions() -> None:
    teacher = build_model("mlp", {"hidden": [32]}, input_shape=(4,), num_classes=2)
    with pytest.raises(RecipeError, match=r"student.auto.width must be in \(0, 1\]; got 0"):
        derive_student(teacher, width=0, depth=0.5)
    with pytest.raises(RecipeError, match=r"student.auto.depth must be in \(0, 1\]; got 1.5"):
        derive_student(teacher, width=0.5, depth=1.5)


def test_unsupported_family_says_what_to_do() -> None:
    with pytest.raises(UnsupportedModuleError, match=r"cannot derive a student from a Sequential.*student: \{model"):
        derive_student(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.5, 0.5)


def _tiny_bert() -> torch.nn.Module:
    cfg = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
           "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 32}
    return build_model("hf:tiny", {"kind": "encoder", "config": cfg})


def test_hf_student_keeps_every_other_teacher_layer(tmp_path: Path) -> None:
    teacher = _tiny_bert()
    student = derive_student(teacher, width=1.0, depth=0.5)
    assert student.hf.config.num_hidden_layers == 2
    assert teacher.hf.config.num_hidden_layers == 4  # the teacher is untouched
    for new, old in zip(student.hf.encoder.layer, [teacher.hf.encoder.layer[0], teacher.hf.encoder.layer[2]]):
        for (name, p), q in zip(new.named_parameters(), old.parameters()):
            assert torch.equal(p, q), name
            assert p.data_ptr() != q.data_ptr()  # copies, not shared
    torch.testing.assert_close(student.hf.embeddings.word_embeddings.weight, teacher.hf.embeddings.word_embeddings.weight)
    ids = torch.randint(0, 100, (2, 7))
    mask = torch.ones_like(ids)
    assert student(ids, mask).shape == teacher(ids, mask).shape == (2, 32)
    again = artifact.load(artifact.save(student, tmp_path / "s"))
    assert again.hf.config.num_hidden_layers == 2
    torch.testing.assert_close(again(ids, mask), student.eval()(ids, mask))


def test_hf_width_is_refused_with_a_hint() -> None:
    with pytest.raises(UnsupportedModuleError, match=r"changes depth only; got width=0.5.*granularity: head"):
        derive_student(_tiny_bert(), width=0.5, depth=0.5)

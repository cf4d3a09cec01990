"""Derive a student from a teacher: narrower and/or shallower, same inputs and outputs.

``student: {auto: {width: 0.25, depth: 0.5}}`` in a recipe calls :func:`derive_student`. Built-in
MLPs, ConvNets and ResNets get scaled widths and fewer layers (fresh weights); Hugging Face encoders
keep every other transformer layer, initialised from the teacher's, as DistilBERT did
(https://arxiv.org/abs/1910.01108).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from slimtorch.errors import RecipeError, UnsupportedModuleError
from slimtorch.models import build_model
from slimtorch.models.attrs import set_attrs_
from slimtorch.models.builtin import MLP, ConvNet, ResNet
from slimtorch.models.hf import HFModel

SUPPORTED = "slimtorch's mlp, cnn and resnet built-ins and Hugging Face encoders (hf:...)"


def _scale(width: int, factor: float) -> int:
    return max(1, round(width * factor))


def _keep(n: int, depth: float) -> int:
    return max(1, min(n, round(n * depth)))


def kept_layers(n: int, depth: float) -> list[int]:
    """Indices of the ``round(n·depth)`` layers to keep, evenly spaced from the first: 6 → [0, 2, 4]."""
    k = _keep(n, depth)
    return [math.floor(i * n / k) for i in range(k)]


def _spec_args(teacher: nn.Module, ref: str) -> dict[str, Any]:
    spec = getattr(teacher, "slimtorch_spec", None) or {}
    return dict(spec.get("args") or {}) if spec.get("ref") == ref else {}


def _mlp_args(teacher: MLP, width: float, depth: float) -> dict[str, Any]:
    linears = [m for m in teacher.net if isinstance(m, nn.Linear)]
    hidden = [m.out_features for m in linears[:-1]]
    known = _spec_args(teacher, "mlp")
    dropout = next((m.p for m in teacher.net if isinstance(m, nn.Dropout)), 0.0)
    kept = [hidden[i] for i in kept_layers(len(hidden), depth)] if hidden else []
    return {"input_shape": list(known.get("input_shape", [linears[0].in_features])), "num_classes": linears[-1].out_features,
            "hidden": [_scale(w, width) for w in kept], "dropout": dropout}


def _cnn_args(teacher: ConvNet, width: float, depth: float) -> dict[str, Any]:
    convs = [m for m in teacher.features if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    known = _spec_args(teacher, "cnn")
    default_shape = [convs[0].in_channels, 8, 8] if isinstance(convs[0], nn.Conv2d) else [convs[0].in_channels, 40]
    channels = [convs[i].out_channels for i in range(_keep(len(convs), depth))]
    head = [m for m in teacher.head if isinstance(m, nn.Linear)]
    return {"input_shape": list(known.get("input_shape", default_shape)), "num_classes": head[-1].out_features,
            "channels": [_scale(c, width) for c in channels], "hidden": _scale(head[0].out_features, width)}


def _resnet_args(teacher: ResNet, width: float, depth: float) -> dict[str, Any]:
    known = _spec_args(teacher, "resnet")
    if not known:
        raise UnsupportedModuleError("auto-student for a resnet needs the teacher's slimtorch_spec (build it with build_model).")
    widths = [_scale(w, width) for w in known.get("widths", (16, 32, 64, 128))]
    blocks = [_keep(b, depth) for b in known.get("blocks", (2, 2, 2, 2))]
    stem = known.get("stem")
    return {**known, "num_classes": teacher.fc.out_features, "widths": widths, "blocks": blocks,
            **({"stem": _scale(stem, width)} if stem else {})}


def _layer_list(hf: nn.Module, n: int) -> tuple[nn.Module, str, nn.ModuleList]:
    """The ModuleList holding the ``n`` transformer layers and its parent (encoder.layer, layers, h...)."""
    for fqn, module in hf.named_modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == n:
                return module, name, child
    raise UnsupportedModuleError(f"cannot find the {n} transformer layers of this Hugging Face model ({type(hf).__name__}).")


def _derive_hf(teacher: nn.Module, width: float, depth: float) -> nn.Module:
    if width != 1.0:
        raise UnsupportedModuleError(
            f"auto-student for a Hugging Face model changes depth only; got width={width}. "
            "Set width: 1.0 and narrow it afterwards with `prune: {granularity: head}` or `{granularity: ffn}`."
        )
    assert isinstance(teacher, HFModel)
    config = teacher.hf.config
    n = int(config.num_hidden_layers)
    keep = kept_layers(n, depth)
    hf = copy.deepcopy(teacher.hf)
    parent, name, layers = _layer_list(hf, n)
    new_layers = nn.ModuleList([layers[i] for i in keep])  # (already copies of the teacher's weights)
    for new_index, layer in enumerate(new_layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                set_attrs_(module, layer_idx=new_index)
    setattr(parent, name, new_layers)
    hf.config.num_hidden_layers = len(keep)
    layer_types = getattr(hf.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n:
        hf.config.layer_types = [layer_types[i] for i in keep]
    student = HFModel(hf, teacher.tokenizer, teacher.kind)
    teacher_spec = getattr(teacher, "slimtorch_spec", None)
    return set_attrs_(student, slimtorch_spec={"ref": (teacher_spec or {}).get("ref", "hf"), "args": {"kind": teacher.kind},
                                               "derived": {"width": width, "depth": depth, "kept_layers": keep}})


def derive_student(teacher: nn.Module, width: float = 0.5, depth: float = 1.0) -> nn.Module:
    """A smaller model of the teacher's family with the same inputs and outputs.

    Args:
        teacher: a built-in ``mlp``/``cnn``/``resnet`` or an ``HFModel`` encoder/classifier.
        width: fraction of every hidden width (channels, units) to keep, in (0, 1].
        depth: fraction of hidden layers (MLP layers, conv blocks, residual blocks, transformer layers) to keep.

    Returns:
        The student, carrying ``slimtorch_spec`` so ``slimtorch.artifact.save``/``load`` round-trip it.

    Raises:
        RecipeError: width/depth outside (0, 1].
        UnsupportedModuleError: a teacher of another family (write the student by hand).

    Example:
        >>> student = derive_student(build_model("mlp", {"hidden": [1200, 1200]}), width=0.25, depth=0.5)  # doctest: +SKIP
    """
    for name, value in (("width", width), ("depth", depth)):
        if not 0 < value <= 1:
            raise RecipeError(f"student.auto.{name} must be in (0, 1]; got {value}. It is the fraction of the teacher's {name} kept.")

    if isinstance(teacher, HFModel):
        return _derive_hf(teacher, width, depth)
    if isinstance(teacher, MLP):
        return build_model("mlp", _mlp_args(teacher, width, depth))
    if isinstance(teacher, ConvNet):
        return build_model("cnn", _cnn_args(teacher, width, depth))
    if isinstance(teacher, ResNet):
        return build_model("resnet", _resnet_args(teacher, width, depth))
    raise UnsupportedModuleError(
        f"auto-student cannot derive a student from a {type(teacher).__name__}; it supports {SUPPORTED}. "
        "Give `student: {model: ..., args: ...}` explicitly instead."
    )


def describe(teacher: nn.Module, student: nn.Module) -> dict[str, Sequence[Any] | int]:
    """Parameter counts of both, for a report line."""
    return {"teacher_params": sum(p.numel() for p in teacher.parameters()),
            "student_params": sum(p.numel() for p in student.parameters())}

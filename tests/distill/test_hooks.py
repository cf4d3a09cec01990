"""Feature taps and width adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtorch.distill.hooks import FeatureTaps, make_adapter
from slimtorch.errors import RecipeError, ShapeMismatchError
from slimtorch.models import build_model


def test_taps_keep_named_outputs_and_remove_cleanly() -> None:
    model = build_model("mlp", {"hidden": [16, 8]}, input_shape=(1, 8, 8), num_classes=10)
    taps = FeatureTaps(model, ["net.1", "net.3"])
    model(torch.randn(4, 1, 8, 8))
    feats = taps.pop()
    assert feats["net.1"].shape == (4, 16) and feats["net.3"].shape == (4, 8)
    taps.remove()
    model(torch.randn(4, 1, 8, 8))
    assert taps.features == {}


def test_unknown_module_name_suggests_close_ones() -> None:
    model = build_model("mlp", {"hidden": [16]}, input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(RecipeError, match=r"the student has no module 'net.11'.*Did you mean 'net.1'"):
        FeatureTaps(model, ["net.11"])


@pytest.mark.parametrize(
    ("s", "t", "kind"),
    [((32,), (32,), nn.Identity), ((32,), (128,), nn.Linear), ((7, 32), (7, 64), nn.Linear),
     ((8, 4, 4), (16, 4, 4), nn.Conv2d), ((8, 20), (16, 20), nn.Conv1d)],
)
def test_adapter_maps_student_width_to_teacher_width(s: tuple[int, ...], t: tuple[int, ...], kind: type) -> None:
    adapter = make_adapter(s, t)
    assert isinstance(adapter, kind)
    assert adapter(torch.randn(2, *s)).shape == (2, *t)


def test_adapter_refuses_spatial_mismatch_with_both_shapes() -> None:
    with pytest.raises(ShapeMismatchError, match=r"student feature shape \(8, 4, 4\) cannot be adapted to teacher feature shape \(16, 2, 2\)"):
        make_adapter((8, 4, 4), (16, 2, 2))

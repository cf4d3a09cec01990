"""ONNX export: parity with torch, dynamic batch (and sequence) axes, masks baked, eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from slimtorch.errors import ShapeMismatchError, UnsupportedModuleError
from slimtorch.export import ExportConfig, ExportStage, export_onnx, max_abs_diff, to_ort
from slimtorch.export.onnx import bake_parametrizations_, resize_batch
from slimtorch.models import build_model
from slimtorch.runtime import OrtModule

ARCHS = [("mlp", {"hidden": [32, 16]}), ("cnn", {"channels": [8, 16]}), ("resnet", {"widths": [8, 16], "blocks": [1, 1]}),
         ("cnn", {"channels": [5, 7], "hidden": 11})]  # odd widths: the shape a structurally pruned CNN has


@pytest.mark.parametrize(("ref", "args"), ARCHS)
def test_export_matches_torch_at_several_batch_sizes(digits, ref, args):
    torch.manual_seed(0)
    model = build_model(ref, args, input_shape=digits.input_shape, num_classes=10).eval()
    ort_model = to_ort(model, digits.example_batch(4))
    for n in (1, 4, 9):
        x = resize_batch(digits.example_batch(n), n)
        assert ort_model(x).shape == (n, 10)
        assert max_abs_diff(model, ort_model, x) < 1e-4


def test_hf_encoder_has_dynamic_batch_and_sequence_axes(tiny_bert, token_batch):
    ort_model = to_ort(tiny_bert, token_batch(2, 5))
    for x in (token_batch(1, 3), token_batch(5, 11, pad_from=6)):
        assert max_abs_diff(tiny_bert, ort_model, x) < 1e-4
    assert ort_model.input_names == ["input_ids", "attention_mask"]


def test_export_uses_eval_mode_even_when_model_is_training(digits):
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [64], "dropout": 0.5}, input_shape=digits.input_shape, num_classes=10)
    model.train()
    ort_model = to_ort(model, digits.example_batch(4))
    model.eval()
    x = digits.example_batch(8)
    assert max_abs_diff(model, ort_model, x) < 1e-5
    assert torch.equal(ort_model(x), ort_model(x))  # no dropout in the graph


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def test_pruning_masks_are_baked_into_a_copy(digits):
    model = build_model("mlp", {"hidden": [32]}, input_shape=digits.input_shape, num_classes=10).eval()
    linear = model.net[1]
    parametrize.register_parametrization(linear, "weight", _Mask((torch.rand_like(linear.weight) > 0.5).float()))
    ort_model = to_ort(model, digits.example_batch(2))
    assert parametrize.is_parametrized(linear)  # the caller's model is untouched
    assert max_abs_diff(model, ort_model, digits.example_batch(8)) < 1e-5
    baked = bake_parametrizations_(model)
    assert not parametrize.is_parametrized(baked.net[1])


def test_export_stage_records_parity(digits, ctx):
    model = build_model("cnn", {"channels": [8, 16]}, input_shape=digits.input_shape, num_classes=10).eval()
    out, record = ExportStage(ExportConfig()).apply(model, ctx)
    assert isinstance(out, OrtModule) and out.slimtorch_runtime == "onnxruntime" and out.slimtorch_format == "onnx"
    assert record.details["max_abs_diff"] < 1e-4
    assert set(record.details["max_abs_diff_by_batch"]) == {"batch_1", "batch_4", "batch_9"}


def test_export_stage_mismatch_is_an_error_or_a_note(digits, ctx):
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [8, 16]}, input_shape=digits.input_shape, num_classes=10).eval()
    with pytest.raises(UnsupportedModuleError, match=r"differs from torch by .* \(> atol"):
        ExportStage(ExportConfig(atol=1e-12)).apply(model, ctx)
    _, record = ExportStage(ExportConfig(atol=1e-12, on_mismatch="warn")).apply(model, ctx)
    assert any("differs from torch" in n for n in record.notes)


def test_exporting_an_onnxruntime_model_is_refused(digits):
    model = build_model("mlp", {"hidden": [8]}, input_shape=digits.input_shape, num_classes=10)
    ort_model = to_ort(model, digits.example_batch(2))
    with pytest.raises(UnsupportedModuleError, match="already runs in onnxruntime"):
        export_onnx(ort_model, digits.example_batch(2))


def test_missing_input_names_the_expected_ones(tiny_bert, token_batch):
    ort_model = to_ort(tiny_bert, token_batch(2, 5))
    with pytest.raises(ShapeMismatchError, match="needs input 'input_ids'"):
        ort_model(attention_mask=torch.ones(2, 5, dtype=torch.long))
    only_ids = token_batch(2, 5)["input_ids"]
    assert ort_model(input_ids=only_ids).shape == (2, 32)  # attention_mask defaults to ones


def test_threads_setting_rebuilds_the_session(digits):
    model = build_model("mlp", {"hidden": [8]}, input_shape=digits.input_shape, num_classes=10)
    ort_model = to_ort(model, digits.example_batch(2))
    first = ort_model.session
    ort_model.threads = 2
    assert ort_model.session is not first and ort_model.session.get_session_options().intra_op_num_threads == 2


@pytest.mark.parametrize("name", ["mha", "transformer_encoder"])
def test_torch_attention_modules_export_and_the_fast_path_flag_is_restored(name):
    from tests.architectures.zoo import build

    model = build(name).eval()
    before = torch.backends.mha.get_fastpath_enabled()
    ort_model = to_ort(model, torch.randn(2, 12, 16))  # was: aten::_native_multi_head_attention has no ONNX form
    assert torch.backends.mha.get_fastpath_enabled() == before
    for n in (1, 5):
        x = torch.randn(n, 12, 16)
        assert max_abs_diff(model, ort_model, x) < 1e-4

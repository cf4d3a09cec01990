"""Quantization-aware training: masks keep their zeros, the int8 ONNX graph matches the fake-quant model and runs as int8."""

from __future__ import annotations

import copy
import itertools

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from slimtorch.errors import UnsupportedModuleError
from slimtorch.export.onnx import export_onnx
from slimtorch.models import build_model
from slimtorch.prune.masks import mask_of, set_mask_
from slimtorch.quantize import QuantizeConfig, QuantizeStage, qat
from slimtorch.quantize.config import QATConfig
from slimtorch.runtime import OrtModule


def _calibration(digits, n=4):
    return [x for x, _ in itertools.islice(digits.loader("train", shuffle=True), n)]


def _prune_half_(model):
    """Mask the smaller half of each Linear's weights (magnitude), as the prune stage does."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            w = m.weight.detach()
            set_mask_(m, (w.abs() > w.abs().median()).float())
    return model


def _optimized_ops(onnx_bytes, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_qat_keeps_pruned_zeros_in_training_and_in_the_int8_graph(mlp, ctx, digits):
    model = _prune_half_(mlp)
    masked = sum(int((mask_of(m) == 0).sum()) for m in model.modules() if mask_of(m) is not None)
    result = qat.train_qat(model, ctx, QATConfig(epochs=1, lr=1e-3), _calibration(digits), digits.example_batch(4))
    trained = [m.module for m in result.model.modules() if isinstance(m, qat.QuantWeight)]
    assert all(mask_of(m) is not None for m in trained)  # the masks stayed in force through training
    assert all(bool((m.weight[mask_of(m) == 0] == 0).all()) for m in trained)
    assert result.is_masks_kept and result.export["int8_weights"] == 3
    graph = onnx.load_from_string(result.onnx_bytes).graph
    int8 = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert sum(int((w == 0).sum()) for w in int8) >= masked
    assert all(mask_of(m) is not None for m in model.modules() if isinstance(m, nn.Linear))  # the input model is untouched


def test_export_matches_the_fake_quant_model_and_runs_as_int8(mlp, ctx, digits, tmp_path):
    result = qat.train_qat(mlp, ctx, QATConfig(epochs=0), _calibration(digits), digits.example_batch(4))
    x = digits.example_batch(64)
    with torch.no_grad():
        fake, exported = result.model(x), OrtModule(result.onnx_bytes)(x)
    step = max(q.scale.item() for q in qat.activation_quantizers(result.model))
    assert (fake - exported).abs().max().item() <= 2 * step + 1e-6  # within two steps of the coarsest int8 grid
    assert (fake.argmax(-1) == exported.argmax(-1)).float().mean().item() >= 0.97
    ops = _optimized_ops(result.onnx_bytes, tmp_path)
    assert ops.count("QGemm") == 3 and "Gemm" not in ops  # every Linear runs as an int8 kernel


def test_int16_saturation_is_simulated_in_torch_only(mlp, digits):
    """Where onnxruntime clips u8·s8 pair sums (no VNNI), the fake-quant Linears add the clipping in torch."""
    calibration = _calibration(digits)
    exact, clipped = (qat.calibrate_(qat.prepare_qat(mlp, saturate=s), calibration).eval() for s in (False, True))
    linears = [m for m in clipped.modules() if isinstance(m, qat.QuantWeight)]
    assert len(linears) == 3 and all(m.__dict__["saturating_input"] is not None for m in linears)  # the first reads through Flatten
    x = digits.example_batch(64)
    with torch.no_grad():
        assert not torch.equal(exact(x), clipped(x))
    # the export holds no trace of it (only ranges calibrated on the clipped outputs differ)
    ops = [[n.op_type for n in onnx.load_from_string(export_onnx(qat.freeze_(m), digits.example_batch(4), 17)).graph.node]
           for m in (exact, clipped)]
    assert ops[0] == ops[1] and ops[0].count("Gemm") == 3


def test_qat_stage_records_parity_and_distills_from_the_teacher(mlp, ctx, digits):
    ctx.teacher = copy.deepcopy(mlp)
    out, record = QuantizeStage(QuantizeConfig(mode="static_int8", calibration_batches=2, qat={"epochs": 1})).apply(mlp, ctx)
    details = record.details["qat"]
    assert details["loss"] == "distillation from the teacher" and details["epochs_run"] == 1
    assert details["parity_vs_fake_quant"]["argmax_agreement"] >= 0.97 and details["int8_weights"] == 3
    assert isinstance(out, OrtModule) and record.details["argmax_agreement"] >= 0.9


def test_batchnorm_is_folded_and_conv_masks_survive(digits):
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [8, 16], "hidden": 16}, input_shape=digits.input_shape, num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    conv = model.features[3]
    set_mask_(conv, (torch.rand_like(conv.weight) > 0.5).float())
    x = digits.example_batch(8)
    folded = qat._fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)
    assert mask_of(folded.get_submodule("features.3")) is not None


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) if x.sum() > 0 else -self.fc(x.flatten(1))


def test_a_model_fx_cannot_trace_is_refused_clearly():
    with pytest.raises(UnsupportedModuleError, match="quantize.qat traces the model with torch.fx and _Branchy does not trace"):
        qat.prepare_qat(_Branchy())

"""Per-layer int8 sensitivity and max_drop on a trained digits MLP (onnxruntime static int8)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from slimtorch.measure.accuracy import task_metric
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.report.plots import quant_sensitivity_png


def _with_outlier_neuron_(mlp):
    """Same function, one hidden neuron 10^4 times larger: a per-tensor int8 range over it loses every other neuron."""
    with torch.no_grad():
        first, second = mlp.net[1], mlp.net[3]
        first.weight[0] *= 1e4
        first.bias[0] *= 1e4
        second.weight[:, 0] /= 1e4
    return mlp


def test_scan_costs_every_weight_layer_and_plots(mlp, ctx):
    _, record = QuantizeStage(QuantizeConfig(mode="static_int8", sensitivity=True)).apply(mlp, ctx)
    scan = record.details["quant_sensitivity"]
    assert [c["layer"] for c in scan["layers"]] == ["/net/net.1/Gemm", "/net/net.3/Gemm", "/net/net.5/Gemm"]
    assert all(c["extra_bytes"] > 0 and c["output_mse_if_float"] >= 0 for c in scan["layers"])
    assert scan["float_layers"] == [] and scan["max_drop"] is None
    assert any("sensitivity scan" in n for n in record.notes)
    assert quant_sensitivity_png("quantize", scan).startswith(b"\x89PNG")


def test_max_drop_keeps_the_costly_layers_float_and_meets_the_budget(mlp, digits, ctx):
    model = _with_outlier_neuron_(mlp)
    reference = task_metric(model, digits, "val")
    out, record = QuantizeStage(QuantizeConfig(mode="static_int8", max_drop=0.005, max_float_fraction=1.0)).apply(model, ctx)
    scan = record.details["quant_sensitivity"]
    assert scan["all_int8_drop"] > 0.3  # the outlier really breaks plain int8
    assert scan["is_met"] and scan["final_drop"] <= 0.005 and scan["float_layers"]
    assert task_metric(out, digits, "val") >= reference - 0.005 - 1e-6
    assert set(record.details["excluded_nodes"]) == set(scan["float_layers"])
    assert "kept in float" in record.notes[-1]


def test_max_drop_that_cannot_be_met_is_a_note_not_a_crash(mlp, ctx):
    model = _with_outlier_neuron_(mlp)
    out, record = QuantizeStage(QuantizeConfig(mode="static_int8", max_drop=0.005, max_float_fraction=0.25)).apply(model, ctx)
    scan = record.details["quant_sensitivity"]
    assert record.status == "done" and not scan["is_met"] and scan["max_float_layers"] == 1
    assert any(n.startswith("max_drop 0.005 not met") and "Raise max_float_fraction" in n for n in record.notes)
    assert out(ctx.data.example_batch(4)).shape == (4, 10)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "int8_weight_only", "runtime": "torch", "max_drop": 0.01}, "max_drop and quantize.sensitivity work on onnxruntime int8"),
    ({"mode": "fp16", "sensitivity": True}, "work on onnxruntime int8"),
    ({"mode": "static_int8", "max_drop": 1.5}, "less than 1"),
    ({"mode": "static_int8", "max_drop": 0.01, "max_float_fraction": 0}, "greater than 0"),
    ({"mode": "dynamic_int8", "runtime": "torch", "qat": {"epochs": 1}}, r"qat trains for mode: static_int8 .* or dynamic_int8 \(runtime: onnxruntime\)"),
    ({"mode": "static_int8", "qat": {"epochs": 1}, "max_drop": 0.01}, "use either qat or max_drop"),
    ({"mode": "static_int8", "qat": {"epochs": 1, "learning_rate": 0.1}}, "Extra inputs are not permitted"),
    ({"mode": "static_int8", "qat": {"lr": 0}}, "greater than 0"),
])
def test_new_options_are_validated_with_clear_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        QuantizeConfig(**kwargs)


def test_recipe_errors_name_the_line_and_the_key(tmp_path):
    from slimtorch.errors import RecipeError
    from slimtorch.recipe import load_recipe

    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ndata: {source: digits}\nteacher: {model: mlp}\nstages:\n"
                    "  - quantize: {mode: static_int8, qat: {epochs: 1, lr_rate: 0.001}}\n")
    with pytest.raises(RecipeError, match=r"line 5: unknown key 'lr_rate' in stages\[0\]\.quantize\.qat\. Valid keys: .*lr"):
        load_recipe(path)

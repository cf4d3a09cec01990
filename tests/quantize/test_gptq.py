"""GPTQ int4: lower output error than round-to-nearest on the calibration inputs, same packed format."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.models import build_model
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.quantize._torch import WeightOnlyLinear
from slimtorch.quantize.gptq import gptq_int4
from tests.tiny_llm import write_text, write_tiny_gguf


def _output_error(w: torch.Tensor, deq: torch.Tensor, x: torch.Tensor) -> float:
    return ((x @ (w - deq).T) ** 2).mean().item()


@pytest.mark.parametrize("act_order,mse", [(False, False), (True, False), (False, True), (True, True)])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(act_order, mse):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 128, generator=gen) @ torch.randn(128, 128, generator=gen)  # (n, K): correlated features
    w = torch.randn(48, 128, generator=gen)
    h = 2 * x.T @ x / len(x)
    codes, scale, minimum = gptq_int4(w, h, group_size=64, act_order=act_order, mse=mse)
    gptq = WeightOnlyLinear(128, 48, 4, 64, has_bias=False).set_int4_(codes, scale, minimum)
    linear = nn.Linear(128, 48, bias=False)
    linear.weight.data = w.clone()
    rtn = WeightOnlyLinear.from_linear(linear, 4, 64)
    assert codes.min() >= 0 and codes.max() <= 15
    assert _output_error(w, gptq.dequantized_weight(), x) < 0.7 * _output_error(w, rtn.dequantized_weight(), x)
    # the stored codes are what the packed kernel multiplies with
    torch.testing.assert_close(gptq(x[:4]), x[:4] @ gptq.dequantized_weight().T, atol=0.5, rtol=0.05)


def test_gptq_config_only_for_int4():
    with pytest.raises(ValueError, match="method 'gptq' applies to mode: int4_weight_only"):
        QuantizeConfig(mode="int8_weight_only", runtime="torch", method="gptq")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    pytest.importorskip("gguf")
    root = tmp_path_factory.mktemp("gptq")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMTORCH_CACHE", str(root / "cache"))
        model = build_model(f"gguf:{write_tiny_gguf(root / 'tiny.gguf')}")
        data = build_data("text", args={"path": str(write_text(root / "text.txt", repeat=1))})
        yield model, data, root


def test_gptq_stage_on_a_causal_lm_saves_and_reloads(tiny_lm, monkeypatch):
    model, data, root = tiny_lm
    monkeypatch.setenv("SLIMTORCH_CACHE", str(root / "cache"))
    cfg = QuantizeConfig(mode="int4_weight_only", runtime="torch", group_size=64, method="gptq", calibration_examples=8)
    out, record = QuantizeStage(cfg).apply(copy.deepcopy(model), RunContext(data=data))
    assert record.details["quantized_linears"] == 15 and record.details["calibration_batches"] >= 1
    assert "GPTQ" in record.details["backend"] and 0 <= record.details["gptq_relative_output_error_mean"] < 0.2
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    artifact.save(out, root / "saved")
    back = artifact.load(root / "saved")
    torch.testing.assert_close(back(ids), out(ids))
    assert isinstance(back.hf.model.layers[0].mlp.down_proj, WeightOnlyLinear)

"""AWQ int4: scales that keep the float model, lower output error than rounding when a few inputs are large."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.errors import UnsupportedModuleError
from slimtorch.models import build_model
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.quantize._torch import WeightOnlyLinear, select_linears
from slimtorch.quantize.awq import apply_scales_, clipped_int4, fake_int4, llama_scale_groups, output_error, search_scale
from slimtorch.quantize.gptq import calibration_inputs, input_statistics
from tests.tiny_llm import write_text, write_tiny_gguf


def _salient_inputs(n: int = 4096, k: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (n, K) whose first 4 channels are 20x larger than the rest (LLM activations look like this), and a weight."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=gen)
    x[:, :4] *= 20
    return x, torch.randn(64, k, generator=gen)


def test_scaling_lowers_the_output_error_of_rounding_when_a_few_inputs_are_large():
    x, w = _salient_inputs()
    h, abs_mean = 2 * x.T @ x / len(x), x.abs().mean(0)
    s, alpha, ratio = search_scale(w, h, abs_mean, group_size=64)
    plain = output_error(fake_int4(w, 64) - w, h)
    scaled = output_error(fake_int4(w * s, 64) / s - w, h)
    assert alpha > 0 and ratio < 0.8 and scaled == pytest.approx(ratio * plain, rel=1e-4)
    assert s[:4].min() > s[4:].max()  # the large channels get the large scales


def test_clipping_never_raises_the_output_error_of_a_group():
    x, w = _salient_inputs(seed=1)
    h = 2 * x.T @ x / len(x)
    deq = lambda c, s, m: (c.reshape(64, -1, 64) * s.float()[..., None] + m.float()[..., None]).reshape(64, -1)
    clipped = deq(*clipped_int4(w, h, 64))
    plain = deq(*clipped_int4(w, h, 64, clip=False))
    assert output_error(clipped - w, h) <= output_error(plain - w, h)
    torch.testing.assert_close(plain, fake_int4(w, 64))


@pytest.fixture(scope="module")
def tiny_lms(tmp_path_factory):
    pytest.importorskip("gguf")
    root = tmp_path_factory.mktemp("awq")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMTORCH_CACHE", str(root / "cache"))
        gqa = build_model(f"gguf:{write_tiny_gguf(root / 'gqa.gguf')}")  # 4 heads, 2 KV heads
        mha = build_model(f"gguf:{write_tiny_gguf(root / 'mha.gguf', kv_heads=4, seed=1)}")
        data = build_data("text", args={"path": str(write_text(root / "text.txt", repeat=2))})
        yield {"gqa": gqa, "mha": mha}, data, root


@pytest.mark.parametrize(("name", "groups_per_layer"), [("gqa", 3), ("mha", 4)])
def test_folded_scales_keep_the_float_model(tiny_lms, name, groups_per_layer):
    models, data, _ = tiny_lms
    model = copy.deepcopy(models[name])
    groups = llama_scale_groups(model)
    assert len(groups) == 2 * groups_per_layer  # v_proj -> o_proj only when their widths match (not under GQA)
    fqns, _ = select_linears(model)
    hessians, abs_means = input_statistics(model, fqns, calibration_inputs(model, data, "train", 16))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    before = model(ids)
    alphas = apply_scales_(model, groups, set(fqns), hessians, abs_means, group_size=32)
    assert len(alphas) == len(groups)
    torch.testing.assert_close(model(ids), before, atol=1e-4, rtol=1e-4)


def test_awq_stage_on_a_causal_lm_saves_and_reloads(tiny_lms, monkeypatch):
    models, data, root = tiny_lms
    monkeypatch.setenv("SLIMTORCH_CACHE", str(root / "cache"))
    cfg = QuantizeConfig(mode="int4_weight_only", runtime="torch", group_size=32, method="awq", calibration_examples=16)
    out, record = QuantizeStage(cfg).apply(copy.deepcopy(models["gqa"]), RunContext(data=data))
    assert "AWQ" in record.details["backend"] and 0 <= record.details["awq_relative_output_error_mean"] < 0.2
    assert isinstance(out.hf.model.layers[1].self_attn.o_proj, WeightOnlyLinear)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    artifact.save(out, root / "saved")
    torch.testing.assert_close(artifact.load(root / "saved")(ids), out(ids))


def test_awq_needs_llama_style_layers_and_int4(mlp, ctx):
    with pytest.raises(UnsupportedModuleError, match="LLaMA-style decoder layers.*Use method: gptq"):
        QuantizeStage(QuantizeConfig(mode="int4_weight_only", runtime="torch", method="awq", calibration_examples=8)).apply(mlp, ctx)
    with pytest.raises(ValidationError, match="method 'awq' applies to mode: int4_weight_only"):
        QuantizeConfig(mode="int8_weight_only", runtime="torch", method="awq")

"""Torch dynamic int8 without the deprecated torch.ao API: the same outputs as torch.ao's quantize_dynamic."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from slimtorch import artifact
from slimtorch.measure.macs import count_macs
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.quantize._torch import (
    DYNAMIC_INT8_KERNELS,
    DynamicInt8Linear,
    fastest_dynamic_int8_kernel,
    int8_weight_grid,
    time_dynamic_int8_kernels,
)


def _torch_ao(model: nn.Module, per_channel: bool) -> nn.Module:
    """Today's reference: torch.ao dynamic int8 (deprecated, still present in torch 2.13)."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        return quantize_dynamic(copy.deepcopy(model), {nn.Linear: qconfig}, dtype=torch.qint8)


@pytest.mark.parametrize("kernel", DYNAMIC_INT8_KERNELS)
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize(("k", "n", "rows"), [(64, 128, 1), (64, 128, 64), (7, 5, 3), (384, 96, 33)])
def test_same_codes_and_outputs_as_torch_ao(per_channel, k, n, rows, kernel):
    torch.manual_seed(k + n + rows)
    linear = nn.Linear(k, n)
    reference = _torch_ao(nn.Sequential(linear), per_channel)[0]
    codes, _ = int8_weight_grid(linear.weight, per_channel)
    assert torch.equal(codes, reference.weight().int_repr())
    ours = DynamicInt8Linear.from_linear(linear, per_channel)
    ours.kernel = kernel
    x = torch.randn(rows, k) * 3 + 0.5
    torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


def test_the_kernel_is_chosen_by_timing_both_and_recorded(mlp, ctx):
    timings = time_dynamic_int8_kernels(((4, 64, 64),), calls=3)
    assert set(timings) == set(DYNAMIC_INT8_KERNELS) and all(t > 0 for t in timings.values())
    # _int_mm is a reference loop on CPUs without a fast int8 kernel for it: fbgemm unless _int_mm is clearly faster
    assert fastest_dynamic_int8_kernel({"fbgemm": 1.0, "int_mm": 0.95}) == "fbgemm"
    assert fastest_dynamic_int8_kernel({"fbgemm": 1.0, "int_mm": 0.5}) == "int_mm"
    assert fastest_dynamic_int8_kernel({"fbgemm": 1.0, "int_mm": 165.0}) == "fbgemm"
    assert fastest_dynamic_int8_kernel({"int_mm": 1.0}) == "int_mm"
    quantized, record = QuantizeStage(QuantizeConfig(mode="dynamic_int8", runtime="torch")).apply(mlp, ctx)
    chosen = record.details["int8_kernel"]
    assert chosen in DYNAMIC_INT8_KERNELS and set(record.details["int8_kernel_us"]) == set(DYNAMIC_INT8_KERNELS)
    assert {m.kernel for m in quantized.modules() if isinstance(m, DynamicInt8Linear)} == {chosen}
    with pytest.raises(ValueError, match="kernel must be one of"):
        DynamicInt8Linear(4, 4).kernel = "vnni"


def test_stage_matches_torch_ao_on_the_trained_mlp_and_round_trips(mlp, ctx, digits, tmp_path):
    reference = _torch_ao(mlp, per_channel=True).eval()
    quantized, _ = QuantizeStage(QuantizeConfig(mode="dynamic_int8", runtime="torch")).apply(mlp, ctx)
    assert sum(isinstance(m, DynamicInt8Linear) for m in quantized.modules()) == 3
    assert not any("torch.ao" in type(m).__module__ for m in quantized.modules())
    x = digits.example_batch(64)
    with torch.no_grad():
        ours, theirs = quantized(x), reference(x)
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=1e-3)  # one-step ties in rounding may differ
    artifact.save(quantized, tmp_path / "q")
    torch.testing.assert_close(artifact.load(tmp_path / "q")(x), ours, atol=0, rtol=0)
    assert count_macs(quantized, x[:1]) == count_macs(mlp, x[:1])  # aten._int_mm is counted


def test_artifacts_written_by_the_torch_ao_version_still_load(mlp, ctx, digits, tmp_path):
    from safetensors.torch import load_file, save_file

    quantized, _ = QuantizeStage(QuantizeConfig(mode="dynamic_int8", runtime="torch")).apply(mlp, ctx)
    artifact.save(quantized, tmp_path / "q")
    reference = _torch_ao(mlp, per_channel=True).eval()
    state = load_file(str(tmp_path / "q" / "model.safetensors"))
    for fqn in ("net.1", "net.3", "net.5"):  # the tensors the torch.ao version wrote, from torch.ao's own module
        qweight = reference.get_submodule(fqn).weight()
        state.update({f"{fqn}.dynamic.int_weight": qweight.int_repr(), f"{fqn}.dynamic.axis": torch.tensor(qweight.q_per_channel_axis()),
                      f"{fqn}.dynamic.scales": qweight.q_per_channel_scales().double(),
                      f"{fqn}.dynamic.zero_points": qweight.q_per_channel_zero_points().long()})
    save_file(state, str(tmp_path / "q" / "model.safetensors"))
    x = digits.example_batch(16)
    with torch.no_grad():
        torch.testing.assert_close(artifact.load(tmp_path / "q")(x), reference(x), atol=2e-3, rtol=1e-3)

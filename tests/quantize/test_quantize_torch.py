"""Torch-side kernels: weight-only int8/int4 Linear match their dequantized math; bf16 wrapper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtorch.errors import UnsupportedModuleError
from slimtorch.quantize._torch import BFloat16Module, WeightOnlyLinear, require_linears, select_linears


@pytest.mark.parametrize(("bits", "out_features"), [(8, 48), (8, 10), (4, 48), (4, 10)])  # N=10: rows padded to 16 for the int4 kernel
def test_weight_only_linear_matches_dequantized_weight(bits, out_features):
    torch.manual_seed(0)
    linear = nn.Linear(64, out_features)
    q = WeightOnlyLinear.from_linear(linear, bits, group_size=32)
    x = torch.randn(2, 5, 64)  # (B, T, K): leading dims are kept
    expected = x @ q.dequantized_weight().t() + linear.bias
    got = q(x)
    assert got.shape == (2, 5, out_features)
    torch.testing.assert_close(got, expected, atol=3e-2, rtol=2e-2)  # activations run in bf16
    err = (q.dequantized_weight() - linear.weight).abs().max().item()
    step = linear.weight.abs().max().item() / (127 if bits == 8 else 7.5)
    assert err <= step  # rounding error is at most one quantization step


def test_int4_codes_pack_two_per_byte():
    linear = nn.Linear(64, 16)
    q = WeightOnlyLinear.from_linear(linear, 4, group_size=32)
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (16, 32)
    assert q.codes().max() <= 15 and q.scale.shape == (16, 2)


def test_select_linears_honours_exclude_and_divisibility():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10), nn.Linear(10, 3))
    chosen, skipped = select_linears(model, exclude=["1"], multiple_of=32)
    assert chosen == ["0", "2"] and skipped == ["3"]


def test_no_linear_layer_is_an_unsupported_module_error():
    convnet = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(UnsupportedModuleError, match="has no Linear layer.*Conv2d.*runtime: onnxruntime"):
        require_linears(convnet, select_linears(convnet)[0], "int4_weight_only")


def test_bf16_module_casts_inputs_and_outputs():
    model = BFloat16Module(nn.Linear(8, 4))
    out = model(torch.randn(3, 8))
    assert out.dtype == torch.float32 and model.inner.weight.dtype == torch.bfloat16


def test_int8_weight_only_runs_any_shape_in_a_fresh_process():
    """torch's CPU int8 kernel segfaulted on shapes like 8 → 3 at batch 16; padding to N%16, K%32 fixes it.

    Run in a subprocess so a regression is a failed test, not a crashed test session.
    """
    import subprocess
    import sys

    code = """
import torch
from torch import nn
from slimtorch.quantize._torch import WeightOnlyLinear
torch.manual_seed(0)
for k, n in [(8, 3), (8, 2), (13, 10), (1, 1), (100, 17), (64, 64)]:
    lin = nn.Linear(k, n)
    q = WeightOnlyLinear.from_linear(lin, bits=8)
    for batch in (1, 3, 16):
        x = torch.randn(batch, k)
        ref = x @ q.dequantized_weight().t() + lin.bias
        assert torch.allclose(q(x), ref, atol=0.05, rtol=0.02), (k, n, batch, (q(x) - ref).abs().max())
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])

"""`slimtorch doctor`: every kernel family is timed on this machine, beside torch fp32, and named with the CPU."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from slimtorch.cli import app
from slimtorch.measure.machine import probe
from slimtorch.quantize.kernels import kernel_table

TINY = (("4 rows, 64→64", 4, 64, 64),)


@pytest.mark.filterwarnings("ignore")
def test_every_kernel_family_is_timed_against_torch_fp32():
    rows = kernel_table(budget_s=0.01, shapes=TINY)
    by_name = {r.kernel: r for r in rows}
    assert rows[0].kernel == "fp32" and rows[0].speedup_vs_fp32 == 1.0
    for family in ("dynamic int8 (fbgemm)", "dynamic int8 (aten._int_mm)", "int8 weight-only, bf16 activations",
                   "int8 weight-only, int8 activations (fbgemm)", "int4 weight-only (g32), bf16 activations",
                   "fp32 (onnxruntime)", "dynamic int8 (onnxruntime)"):
        row = by_name[family]
        assert row.us is not None and row.us > 0, row
        assert row.speedup_vs_fp32 == pytest.approx(rows[0].us / row.us, abs=0.01)
    assert ("bf16" in by_name) == probe().bf16 and ("bf16 (emulated)" in by_name) == (not probe().bf16)


@pytest.mark.filterwarnings("ignore")
def test_doctor_prints_the_machine_and_the_table(monkeypatch):
    from slimtorch.quantize import kernels

    # the command's shapes and time per cell, made tiny so the test is quick
    monkeypatch.setattr(kernels.kernel_table, "__defaults__", (1, 0.01, TINY, True))
    monkeypatch.setattr(kernels.doctor, "__defaults__", (1, 0.01, True))
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["machine"]["summary"] == probe().summary() and len(report["kernels"]) >= 9
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert probe().summary() in result.output and "fastest is" in result.output


def test_a_weight_only_stage_says_whether_its_kernel_beats_fp32_here(mlp, ctx):
    from slimtorch.quantize import QuantizeConfig, QuantizeStage
    from slimtorch.quantize.details import KernelCheck

    _, record = QuantizeStage(QuantizeConfig(mode="int8_weight_only")).apply(mlp, ctx)
    check = record.details["kernel_check"]
    assert check["bits"] == 8 and check["rows"] == 1 and check["machine"] == probe().summary()
    assert check["speedup"] == pytest.approx(check["fp32_us"] / check["weight_only_us"], rel=0.05)
    warned = any(n.startswith("WARNING: int8 weight-only") for n in record.notes)
    assert warned == (check["speedup"] < 1.0)
    slow = KernelCheck.from_json({**check, "bits": 4, "speedup": 0.4}).note()
    assert slow is not None and "0.40x the speed of fp32" in slow and "mode: dynamic_int8" in slow
    assert KernelCheck.from_json({**check, "speedup": 1.3}).note() is None


def test_int8_activations_auto_keeps_the_faster_16_bit_path_here(mlp, ctx):
    from slimtorch.quantize import QuantizeConfig, QuantizeStage
    from slimtorch.quantize._torch import WeightOnlyLinear

    assert QuantizeConfig(mode="int8_weight_only").int8_activations == "auto"
    out, record = QuantizeStage(QuantizeConfig(mode="int8_weight_only")).apply(mlp, ctx)
    us, chosen = record.details["int8_activations_us"], record.details["int8_activations"]
    assert set(us) == {"bf16", "int8x2"} and all(v > 0 for v in us.values())
    assert chosen == ("int8x2" if us["int8x2"] < 0.9 * us["bf16"] else "bf16")
    assert {m.activations for m in out.modules() if isinstance(m, WeightOnlyLinear)} == {chosen}
    # a mode without int8 weight-only layers accepts auto and changes nothing
    assert QuantizeConfig(mode="dynamic_int8", runtime="torch").int8_activations == "auto"


def test_fbgemms_default_activation_grid_never_saturates_on_this_cpu():
    import torch

    from slimtorch.quantize._torch import REDUCE_RANGE, fbgemm_saturates, int8_dynamic_mm

    assert REDUCE_RANGE == fbgemm_saturates()  # asked of the kernel, not of /proc/cpuinfo
    qweight, scale = torch.full((3, 64), 127, dtype=torch.int8), torch.ones(3)
    x = torch.ones(2, 64)  # every activation at the top of the grid: the largest pair sums fbgemm can meet
    torch.testing.assert_close(int8_dynamic_mm(x, qweight, scale), torch.full((2, 3), 64 * 127.0), rtol=1e-4, atol=1e-3)

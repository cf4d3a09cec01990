"""``runtime: auto`` (the quantize default): every runtime that implements the mode is built and timed here, side by side."""

from __future__ import annotations

import math

import pytest

from slimtorch.measure.machine import probe
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.quantize.stage import fastest_faithful


def test_auto_is_the_default_and_narrows_to_what_the_options_allow():
    assert QuantizeConfig().runtime == "auto"
    assert sorted(QuantizeConfig().candidate_runtimes()) == ["onnxruntime", "torch"]
    # one runtime implements the mode (or the options): resolved when the config is read
    assert QuantizeConfig(mode="int4_weight_only").runtime == "torch"
    assert QuantizeConfig(mode="fp16").runtime == "onnxruntime"
    assert QuantizeConfig(smooth=0.8).runtime == "onnxruntime"  # SmoothQuant is an onnxruntime int8 option
    assert QuantizeConfig(mode="int8_weight_only", int8_activations="int8").runtime == "torch"
    assert QuantizeConfig(mode="dynamic_int8", runtime="torch").candidate_runtimes() == ["torch"]


def test_auto_with_options_no_runtime_accepts_says_why_for_each():
    with pytest.raises(ValueError, match=r"runtime: auto found no runtime for mode 'dynamic_int8'.*onnxruntime: .*int8_activations"
                                         r".*torch: .*int8_activations"):
        QuantizeConfig(smooth=0.8, int8_activations="int8")


def test_the_fastest_faithful_candidate_wins():
    assert fastest_faithful([1.0, 1.0], [2.0, 1.0], 0.005) == (1, [0, 1])
    assert fastest_faithful([1.0, 0.99], [2.0, 1.0], 0.005) == (0, [0])  # faster but a point less faithful
    assert fastest_faithful([0.999, 0.9995], [2.0, 1.0], 0.002) == (1, [0, 1])


def _log_time(row):
    return sum(math.log(v) for v in row["p50_ms"].values())


@pytest.mark.filterwarnings("ignore")
def test_the_stage_times_each_candidate_beside_the_float_model_and_keeps_the_fastest(mlp, ctx):
    out, record = QuantizeStage(QuantizeConfig(mode="dynamic_int8")).apply(mlp, ctx)
    auto = record.details["runtime_auto"]
    rows = {r["runtime"]: r for r in auto["candidates"]}
    assert set(rows) == {"onnxruntime", "torch"} and sum(r["chosen"] for r in rows.values()) == 1
    chosen = next(r for r in rows.values() if r["chosen"])
    assert getattr(out, "slimtorch_runtime", "torch") == chosen["runtime"]
    other = next(r for r in rows.values() if not r["chosen"])
    assert _log_time(chosen) <= _log_time(other) or "below the best" in other["why"]
    for r in rows.values():
        assert set(r["p50_ms"]) == {"1", "64"} and all(v > 0 for v in r["p50_ms"].values())
        assert r["speedup_vs_float"]["1"] == pytest.approx(auto["float_p50_ms"]["1"] / r["p50_ms"]["1"], rel=0.01)
    assert auto["timed_on"] == probe().summary()
    assert record.notes[0].startswith(f"runtime: auto chose {chosen['runtime']}")
    assert record.details["argmax_agreement"] > 0.95


@pytest.mark.filterwarnings("ignore")
def test_reduce_range_follows_what_this_cpus_onnxruntime_computes_unless_set(mlp, ctx):
    from slimtorch.quantize.dynamic_qat import u8s8_saturates

    saturates = u8s8_saturates()  # asked of onnxruntime: True on AVX2-only CPUs (int16 pair sums), False with VNNI
    _, record = QuantizeStage(QuantizeConfig(mode="dynamic_int8", runtime="onnxruntime")).apply(mlp, ctx)
    assert record.details["reduce_range"] is saturates
    assert any("7-bit int8 weights" in n for n in record.notes) is saturates
    _, record = QuantizeStage(QuantizeConfig(mode="dynamic_int8", runtime="onnxruntime", reduce_range=True)).apply(mlp, ctx)
    assert record.details["reduce_range"] is True and not any("7-bit int8 weights" in n for n in record.notes)


@pytest.mark.filterwarnings("ignore")
def test_a_runtime_that_cannot_build_the_mode_drops_out_and_says_why():
    from slimtorch.core import RunContext
    from slimtorch.data import build_data
    from tests.architectures.zoo import build

    model = build("conv_classifier").eval()  # convolutions only: torch int8 quantizes nn.Linear, onnxruntime convs too
    bundle = build_data("tests.architectures.zoo:data", args={"kind": "image"}, batch_size=8)
    out, record = QuantizeStage(QuantizeConfig(mode="dynamic_int8")).apply(model, RunContext(data=bundle))
    rows = {r["runtime"]: r for r in record.details["runtime_auto"]["candidates"]}
    assert rows["onnxruntime"]["chosen"] and getattr(out, "slimtorch_runtime", None) == "onnxruntime"
    assert not rows["torch"]["chosen"] and rows["torch"]["why"].startswith("cannot build it: quantize mode 'dynamic_int8' quantizes nn.Linear")
    assert "torch: cannot build it" in record.notes[0]

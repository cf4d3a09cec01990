"""Latency timing: statistics, thread pinning and restoration, onnxruntime threads."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from slimtorch.measure import time_latency
from slimtorch.measure.latency import summarize
from slimtorch.measure.measurement import LatencyStats

KEYS = {"p10", "p50", "p90", "mean", "std", "min", "repeats"}


def test_latency_statistics_are_ordered_and_threads_restored():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).train()
    before = torch.get_num_threads()
    t = time_latency(model, torch.randn(8, 32), warmup=2, repeats=20, threads=2)
    assert set(t.to_json()) == KEYS
    assert t.min is not None and t.p10 is not None and 0 < t.min <= t.p10 <= t.p50 <= t.p90
    assert t.repeats == 20
    assert torch.get_num_threads() == before
    assert model.training  # restored


def test_time_budget_stops_early():
    model = nn.Linear(4, 4)
    t = time_latency(model, torch.randn(1, 4), warmup=0, repeats=100_000, threads=1, max_seconds=0.01)
    assert t.repeats is not None and 3 <= t.repeats < 100_000


@given(st.lists(st.floats(0.01, 1000.0), min_size=1, max_size=60))
def test_summary_percentiles_lie_within_samples(samples):
    s = summarize(samples)
    assert s.min is not None and min(samples) == pytest.approx(s.min, abs=1e-4)
    assert s.min <= s.p50 + 1e-4 and s.p50 <= s.p90 + 1e-4 and s.p90 <= max(samples) + 1e-4


def test_summary_known_answer():
    s = summarize([float(i) for i in range(1, 11)])
    assert s.p50 == 5.5 and s.p90 == 9.0 and s.mean == 5.5 and s.repeats == 10
    assert list(s.to_json()) == ["p50", "p10", "p90", "mean", "std", "min", "repeats"]  # report.json's order


@pytest.mark.filterwarnings("ignore")
def test_onnxruntime_wrapper_runs_on_the_requested_threads():
    from slimtorch.runtime import OrtModule

    model = nn.Linear(8, 3).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 8), buf, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}})
    ort_model = OrtModule(buf.getvalue(), threads=1)
    seen = []
    ort_model.register_forward_pre_hook(lambda m, args: seen.append(m.threads))
    time_latency(ort_model, torch.zeros(4, 8), warmup=1, repeats=3, threads=2)
    assert set(seen) == {2}
    assert ort_model.threads == 1


def test_interleaved_timing_ranks_models_and_restores_modes():
    from slimtorch.measure.latency import time_interleaved

    small = nn.Sequential(nn.Linear(64, 8)).train()
    big = nn.Sequential(*[nn.Linear(512, 512) for _ in range(6)]).eval()
    inputs_small, inputs_big = {"16": torch.randn(16, 64)}, {"16": torch.randn(16, 512)}
    before = torch.get_num_threads()
    fast, slow = time_interleaved([(small, inputs_small), (big, inputs_big)], warmup=2, repeats=20, threads=1, rounds=4)
    assert fast["16"].repeats == slow["16"].repeats == 20 and fast["16"].rounds == 4
    assert fast["16"].p50 * 5 < slow["16"].p50  # 6 layers of 512² against one 64×8 layer
    assert small.training and not big.training and torch.get_num_threads() == before


def test_timings_inside_each_others_spread_are_not_a_speedup():
    from slimtorch.measure import Measurement
    from slimtorch.report.table import within_spread

    def timed(**stats):
        return Measurement(name="m", stage="s", params=1, nonzero_params=1, size_bytes=None, compressed_bytes=None, macs=None,
                           runtime="torch", threads=1, latency_ms={"1": LatencyStats(**stats)}, metrics={}, agreement=None, robustness={})

    def m(p10, p50, p90):
        return timed(p10=p10, p50=p50, p90=p90)

    assert within_spread(m(0.9, 1.0, 1.3), m(0.85, 1.1, 1.4), "1")
    assert not within_spread(m(0.9, 1.0, 1.1), m(0.4, 0.5, 0.6), "1")
    assert not within_spread(timed(p50=1.0, p90=1.2), m(0.9, 1.0, 1.1), "1")  # old reports: no p10


class _Sleepy(nn.Module):
    """A model whose forward pass takes ``seconds`` of wall time (a stand-in for a large model on a slow CPU)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.linear, self.seconds, self.calls = nn.Linear(4, 4), seconds, 0

    def forward(self, x):
        import time

        self.calls += 1
        time.sleep(self.seconds)
        return self.linear(x)


def test_the_budget_bounds_warm_up_and_timed_passes_of_a_slow_model():
    slow = _Sleepy(0.05)
    t = time_latency(slow, torch.randn(1, 4), warmup=20, repeats=50, threads=1, max_seconds=0.2)
    # 0.1 s of warm-up (2-3 passes) and 0.1 s of timing (3 passes minimum), instead of 70 passes (3.5 s)
    assert t.repeats == 3 and slow.calls <= 7
    assert t.p50 >= 50


def test_the_budget_bounds_interleaved_rounds_too():
    from slimtorch.measure.latency import time_interleaved

    slow, fast = _Sleepy(0.05), nn.Linear(4, 4)
    x = {"1": torch.randn(1, 4)}
    slow_t, fast_t = time_interleaved([(slow, x), (fast, x)], warmup=20, repeats=50, threads=1, rounds=5, max_seconds=0.2)
    assert slow_t["1"].repeats == 5 and slow.calls <= 5 + 5 + 3  # one timed pass a round, its re-warm pass, warm-up
    assert fast_t["1"].repeats == 50  # a fast model still gets every pass asked for


def test_a_causal_lm_is_timed_at_batch_1_unless_the_recipe_names_batch_sizes():
    from slimtorch.measure import LatencyConfig

    assert LatencyConfig().sizes_for(is_causal_lm=True) == [1]
    assert LatencyConfig().sizes_for(is_causal_lm=False) == [1, 64]
    assert LatencyConfig(batch_sizes=[1, 8]).sizes_for(is_causal_lm=True) == [1, 8]


def test_eval_mode_restores_each_submodule_mode():
    from slimtorch.measure import eval_mode

    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout())
    net[1].eval()  # a frozen norm inside a training network must stay frozen
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training and net[2].training


def test_quick_latency_ms_times_in_eval_mode_and_restores():
    from slimtorch.measure import quick_latency_ms

    net = nn.Sequential(nn.Linear(16, 16), nn.Dropout())
    ms = quick_latency_ms(net, torch.zeros(1, 16), budget_s=0.05)
    assert ms > 0 and net.training


def test_efficiency_rule():
    from slimtorch.measure import lags_mac_cut, speedup_efficiency

    assert speedup_efficiency(1.0, 2.0) is None  # the MACs did not fall
    assert speedup_efficiency(4.0, 2.0) == 0.5
    assert lags_mac_cut(4.0, 1.5) and not lags_mac_cut(4.0, 2.0) and not lags_mac_cut(1.4, 0.1)

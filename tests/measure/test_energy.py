"""Energy counters read for real: a RAPL powercap tree of counter files (the layout Linux exposes), the
"no counter" path of this machine, NVML through its own binding, and joules per call from interleaved rounds."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from slimtorch.errors import RecipeError
from slimtorch.measure.config import EnergyConfig
from slimtorch.measure.energy import NO_COUNTER, POWERCAP, EnergyMeter, counter_for, nvml_counter, rapl_counter
from slimtorch.measure.latency import time_interleaved
from slimtorch.recipe import load_recipe


def _zone(root: Path, name: str, label: str, energy_uj: int, max_uj: int = 10**12) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def test_rapl_sums_package_zones_ignores_subzones_and_undoes_wraparound(tmp_path):
    p0 = _zone(tmp_path, "intel-rapl:0", "package-0", 9_000_000, max_uj=10_000_000)
    p1 = _zone(tmp_path, "intel-rapl:1", "package-1", 500)
    _zone(tmp_path, "intel-rapl:0:0", "core", 0)  # a sub-zone: counted inside its package already
    (tmp_path / "dram-like").mkdir()
    counter, why = rapl_counter(tmp_path)
    assert counter is not None and why == ""
    assert counter.name == "RAPL package-0 (intel-rapl:0), package-1 (intel-rapl:1)"
    assert counter.joules() == 0.0
    (p0 / "energy_uj").write_text("1000000\n")  # wrapped: 9 J -> 10 J (wrap) -> 1 J is 2 J spent
    (p1 / "energy_uj").write_text("1500500\n")  # +1.5 J
    assert counter.joules() == pytest.approx(3.5)
    (p0 / "energy_uj").write_text("1250000\n")
    assert counter.joules() == pytest.approx(3.75)


def test_rapl_without_powercap_or_zones_says_there_is_no_counter(tmp_path):
    counter, why = rapl_counter(tmp_path / "absent")
    assert counter is None and why.startswith(NO_COUNTER) and "absent" in why
    (tmp_path / "empty").mkdir()
    counter, why = rapl_counter(tmp_path / "empty")
    assert counter is None and "no RAPL package zone" in why


@pytest.mark.skipif(POWERCAP.exists(), reason="this machine exposes /sys/class/powercap")
def test_this_machine_has_no_counter_and_the_report_says_so(tmp_path):
    from slimtorch.run.pipeline import compress

    counter, why = counter_for("cpu")
    assert counter is None and why.startswith(NO_COUNTER)
    recipe = {"name": "e", "teacher": {"model": "mlp", "args": {"hidden": [8]}},
              "evaluate": {"latency": {"batch_sizes": [1], "repeats": 3, "warmup": 0}, "noise_levels": []}}
    report = compress(recipe, tmp_path / "e").report
    energy = report.baseline_model.energy
    assert energy["measured"] is None and energy["counter"] is None and "estimated" not in energy
    text = (tmp_path / "e" / "report.md").read_text()
    assert "## Energy" in text and "No energy figures: no energy counter on this machine" in text


def test_nvml_through_its_own_binding():
    pytest.importorskip("pynvml")
    counter, why = nvml_counter(0)
    if torch.cuda.is_available():
        assert counter is not None and counter.joules() >= 0
    else:  # the real library, no driver: it says why
        assert counter is None and "NVML" in why


class _PowerSource(threading.Thread):
    """Raises a fake package counter at ``watts`` while it runs, as the hardware would."""

    def __init__(self, zone: Path, watts: float) -> None:
        super().__init__(daemon=True)
        self.zone, self.watts, self.stop = zone, watts, threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        while not self.stop.is_set():
            uj = int((time.perf_counter() - start) * self.watts * 1e6)
            tmp = self.zone / "energy_uj.tmp"
            tmp.write_text(f"{uj}\n")
            tmp.replace(self.zone / "energy_uj")
            time.sleep(0.0005)


def test_interleaved_rounds_give_joules_per_call_from_the_counter(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", "package-0", 0)
    source = _PowerSource(zone, watts=50.0)
    source.start()
    try:
        meter = EnergyMeter(EnergyConfig(), ["cpu", "cpu"], root=tmp_path)
        models = [nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512)) for _ in range(2)]
        x = {"4": torch.randn(4, 512)}
        time_interleaved([(m, x) for m in models], warmup=1, repeats=800, threads=1, rounds=4, energy=meter)
    finally:
        source.stop.set()
        source.join()
    for i in range(2):
        result = meter.result(i)
        measured = result["measured"]
        assert measured["calls"]["4"] == 800 and "estimated" not in result
        watts = measured["joules_per_call"]["4"] * measured["calls"]["4"] / measured["seconds"]["4"]
        assert watts == pytest.approx(50.0, rel=0.25)  # counter-file updates every ~0.5 ms
        assert measured["joules_per_example"]["4"] == pytest.approx(measured["joules_per_call"]["4"] / 4)
        assert result["counter"] == "RAPL package-0 (intel-rapl:0)"


def test_an_estimate_only_when_asked_labelled_and_apart_from_measured(tmp_path):
    meter = EnergyMeter(EnergyConfig(mode="estimate", tdp_watts=100), ["cpu"], root=tmp_path / "absent")
    model = nn.Linear(64, 64)
    time_interleaved([(model, {"1": torch.randn(1, 64)})], warmup=0, repeats=20, threads=1, energy=meter)
    result = meter.result(0)
    assert result["measured"] is None and result["notes"][0].startswith(NO_COUNTER)
    assert result["estimated"]["method"].startswith("TDP 100 W × this process's share of the CPU")
    assert result["estimated"]["joules_per_call"]["1"] > 0
    assert EnergyMeter(EnergyConfig(mode="off"), ["cpu"]).result(0) == {}


def test_estimate_without_tdp_is_refused():
    with pytest.raises(RecipeError, match="needs tdp_watts"):
        load_recipe({"teacher": {"model": "mlp"}, "evaluate": {"energy": {"mode": "estimate"}}})

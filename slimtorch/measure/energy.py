"""Joules per inference, read from the machine's own energy counters in the same interleaved rounds as latency.

Counters: RAPL on Linux x86 (``/sys/class/powercap/intel-rapl:N/energy_uj``, one per CPU package; AMD Zen
exposes its package counter there too) and NVML on NVIDIA GPUs (``nvmlDeviceGetTotalEnergyConsumption``,
millijoules since the driver loaded). Both are read directly: a few lines per counter, where Zeus or CodeCarbon
would add a dependency and a sampling thread for the same two reads.

What a counter measures is the whole package or GPU over the timed passes, whatever else ran on it, idle power
included; the report says so. Where no counter is exposed (most VMs: ``/sys/class/powercap`` is absent) the card
says "no energy counter on this machine" and gives no figure. An estimate is made only when the recipe asks for
one (``evaluate: {energy: {mode: estimate, tdp_watts: W}}``); it is labelled with its method and kept apart
from measured figures.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from slimtorch.measure.config import EnergyConfig

POWERCAP = Path("/sys/class/powercap")
# a package zone: intel-rapl:0 (sub-zones such as intel-rapl:0:0, the cores, are inside it and counted by it)
_PACKAGE_ZONE = re.compile(r"^[a-z-]*rapl:\d+$")
NO_COUNTER = "no energy counter on this machine"
T = TypeVar("T")


class EnergyCounter(Protocol):
    """A cumulative energy counter: :meth:`joules` only grows (wrap-arounds are undone by the reader)."""

    name: str

    def joules(self) -> float: ...


class RaplCounter:
    """The RAPL package counters under a powercap directory, summed over packages, wrap-around undone.

    Args:
        zones: package zone directories (``.../intel-rapl:0``), each holding ``energy_uj`` and
            ``max_energy_range_uj`` (the value at which ``energy_uj`` wraps to zero).
    """

    def __init__(self, zones: list[Path]) -> None:
        self.zones = zones
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self.last = [self._raw(z) for z in zones]
        self.total_uj = 0
        labels = [f"{(z / 'name').read_text().strip() if (z / 'name').exists() else z.name} ({z.name})" for z in zones]
        self.name = f"RAPL {', '.join(labels)}"

    @staticmethod
    def _raw(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def joules(self) -> float:
        for i, zone in enumerate(self.zones):
            now = self._raw(zone)
            step = now - self.last[i]
            self.total_uj += step if step >= 0 else step + self.ranges[i]  # the counter wrapped once
            self.last[i] = now
        return self.total_uj / 1e6


class NvmlCounter:
    """An NVIDIA GPU's total-energy counter through NVML (``nvidia-ml-py``), in joules."""

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = f"NVML GPU {index} ({pynvml.nvmlDeviceGetName(self.handle)})"

    def joules(self) -> float:
        return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)) / 1e3


def rapl_counter(root: Path = POWERCAP) -> tuple[RaplCounter | None, str]:
    """The RAPL package counters under ``root``, or None and why not."""
    if not root.is_dir():
        return None, f"{NO_COUNTER} ({root} is absent: the kernel exposes no RAPL counters, as on most VMs)"
    zones = sorted(p for p in root.iterdir() if _PACKAGE_ZONE.match(p.name) and (p / "energy_uj").exists())
    if not zones:
        return None, f"{NO_COUNTER} ({root} has no RAPL package zone with an energy_uj counter)"
    try:
        return RaplCounter(zones), ""
    except PermissionError:
        return None, (f"{NO_COUNTER} readable by this user: {zones[0] / 'energy_uj'} is root-only (since Linux 5.10); "
                      f"`sudo chmod o+r {root}/*/energy_uj` lets a measurement read it")
    except (OSError, ValueError) as exc:
        return None, f"{NO_COUNTER} (RAPL counter unreadable: {exc})"


def nvml_counter(index: int) -> tuple[NvmlCounter | None, str]:
    """GPU ``index``'s NVML energy counter, or None and why not."""
    try:
        import pynvml
    except ImportError:
        return None, "no energy counter read for this GPU: NVML's Python binding is not installed (pip install nvidia-ml-py)"
    try:
        return NvmlCounter(index), ""
    except pynvml.NVMLError as exc:  # not supported on this GPU, no permission, driver mismatch
        return None, f"no energy counter on this GPU (NVML: {exc})"


def counter_for(device: str, root: Path = POWERCAP) -> tuple[EnergyCounter | None, str]:
    """The counter that sees a model running on ``device`` (``cpu``, ``cuda:0``...), or None and why not."""
    if device.startswith("cuda"):
        return nvml_counter(int(device.partition(":")[2] or 0))
    if device == "cpu":
        return rapl_counter(root)
    return None, f"{NO_COUNTER} for {device} models"


@dataclass
class _Tally:
    joules: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    calls: int = 0


@dataclass
class EnergyMeter:
    """Energy over the timed passes of each (model, batch) of an interleaved latency run.

    Args:
        config: ``evaluate.energy``.
        devices: where each timed model runs, in the order of the timing entries.
        root: the powercap directory (tests point it at a directory of their own).
    """

    config: EnergyConfig
    devices: list[str]
    root: Path = POWERCAP
    counters: list[EnergyCounter | None] = field(init=False)
    reasons: list[str] = field(init=False)
    tallies: dict[tuple[int, str], _Tally] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        found: dict[str, tuple[EnergyCounter | None, str]] = {}
        for d in dict.fromkeys(self.devices):
            found[d] = counter_for(d, self.root) if self.config.mode != "off" else (None, "")
        self.counters = [found[d][0] for d in self.devices]
        self.reasons = [found[d][1] for d in self.devices]

    def around(self, entry: int, batch: str, passes: Callable[[], list[T]]) -> list[T]:
        """Run ``passes()`` (one round's timed passes, a list of per-pass timings) and add its energy to the tally."""
        counter = self.counters[entry]
        before = counter.joules() if counter is not None else 0.0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        samples = passes()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        tally = self.tallies.setdefault((entry, batch), _Tally())
        tally.joules += (counter.joules() - before) if counter is not None else 0.0
        tally.cpu_s, tally.wall_s, tally.calls = tally.cpu_s + cpu, tally.wall_s + wall, tally.calls + len(samples)
        return samples

    def result(self, entry: int) -> dict[str, Any]:
        """The ``Measurement.energy`` of timing entry ``entry``: measured figures, an estimate if asked, and notes."""
        if self.config.mode == "off":
            return {}
        tallies = {b: t for (i, b), t in self.tallies.items() if i == entry and t.calls}
        counter = self.counters[entry]
        out: dict[str, Any] = {"counter": counter.name if counter is not None else None, "measured": None, "notes": []}
        if counter is None:
            out["notes"].append(self.reasons[entry])
        elif tallies:
            out["measured"] = _figures({b: t.joules for b, t in tallies.items()}, tallies)
            out["notes"].append(f"measured by {counter.name} over the timed passes: the whole "
                                f"{'GPU' if isinstance(counter, NvmlCounter) else 'CPU package'}, idle power and anything else running "
                                "on it included")
            short = [b for b, t in tallies.items() if t.wall_s < MIN_RELIABLE_S]
            if short:
                out["notes"].append(f"batch {', '.join(short)}: only {min(tallies[b].wall_s for b in short):.3g} s of passes were "
                                    f"counted; counters update every millisecond or so, so these figures are rough (raise "
                                    "evaluate.latency.repeats for more)")
        if self.config.mode == "estimate" and self.devices[entry] != "cpu":
            out["notes"].append(f"no estimate for a model on {self.devices[entry]}: the TDP estimate is of CPU time")
        elif self.config.mode == "estimate" and self.config.tdp_watts is not None and tallies:
            cpus = os.cpu_count() or 1
            joules = {b: self.config.tdp_watts * t.cpu_s / cpus for b, t in tallies.items()}
            out["estimated"] = {**_figures(joules, tallies),
                                "method": f"TDP {self.config.tdp_watts:g} W × this process's share of the CPU (its CPU time ÷ "
                                          f"{cpus} logical CPUs) over the timed passes"}
        return out


MIN_RELIABLE_S = 0.1  # counted passes shorter than this in total are below the counters' useful resolution


def _figures(joules: dict[str, float], tallies: dict[str, _Tally]) -> dict[str, Any]:
    return {"joules_per_call": {b: j / tallies[b].calls for b, j in joules.items()},
            "joules_per_example": {b: j / tallies[b].calls / int(b) for b, j in joules.items()},
            "calls": {b: t.calls for b, t in tallies.items()},
            "seconds": {b: round(t.wall_s, 4) for b, t in tallies.items()}}

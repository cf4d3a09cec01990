"""Every report names the machine its figures were measured on: the CPU's instruction sets decide which kernels are fast."""

from __future__ import annotations

import json
from pathlib import Path

from slimtorch.measure.machine import probe
from slimtorch.report import render_markdown
from slimtorch.report.card import Report
from slimtorch.report.html import render_html


def _flags_from_cpuinfo() -> set[str]:
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return set()
    first = info.read_text().split("\n\n", 1)[0]
    return {w for line in first.splitlines() if line.startswith(("flags", "Features")) for w in line.split(":", 1)[1].split()}


def test_the_probe_reads_this_cpus_instruction_sets():
    machine = probe()
    flags = _flags_from_cpuinfo()
    if machine.arch in ("x86_64", "amd64") and flags:
        assert machine.flags["avx2"] == ("avx2" in flags)
        assert machine.isa == ("avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other")
        assert machine.int8_dot == bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
        assert machine.bf16 == bool({"avx512_bf16", "amx_bf16"} & flags)
        assert ("no VNNI" in machine.summary()) == (not machine.int8_dot)
    assert machine.cores >= 1 and machine.torch_capability
    assert json.loads(json.dumps(machine.to_json()))["summary"] == machine.summary()


def test_report_json_and_both_renderings_name_the_machine(report, tmp_path):
    assert report["machine"]["summary"] == probe().summary()
    card = Report.from_json(json.loads(json.dumps(report)))
    assert f"Measured on: {probe().summary()}." in render_markdown(card)
    assert "measured on " + probe().summary() in render_html(card)
    # a report written on another machine keeps that machine when re-rendered here
    other = {**report, "machine": {**report["machine"], "summary": "Zen 3 box, x86_64 AVX2 (no VNNI, no BF16), 2 cores"}}
    assert "Measured on: Zen 3 box, x86_64 AVX2 (no VNNI, no BF16), 2 cores." in render_markdown(Report.from_json(other))
    # reports from before the probe render without the line
    old = {k: v for k, v in report.items() if k != "machine"}
    assert "Measured on" not in render_markdown(Report.from_json(old))

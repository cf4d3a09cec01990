"""What this machine is: the CPU's instruction sets that decide which kernels are fast, its cores, its GPU.

Every speed figure depends on them: fbgemm's int8 GEMM uses VNNI when the CPU has it and saturating
16-bit pair sums when it has not; bf16 is native with AVX512-BF16 or AMX and emulated elsewhere;
onnxruntime and torch each pick their kernels from the same flags. The report card, every benchmark
line and ``slimtorch doctor`` record the probe, so a figure always names the CPU it was measured on.

Example:
    >>> probe().isa in ("avx512", "avx2", "neon", "other")
    True
"""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# Instruction sets that change which kernels are fast, as /proc/cpuinfo names them (x86 "flags", ARM "Features").
X86_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
             "avx512_fp16")
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2")


@dataclass(frozen=True)
class Machine:
    """One probe of this machine (see :func:`probe`).

    Attributes:
        cpu: the CPU's model name (``/proc/cpuinfo``'s "model name", else ``platform.processor()``).
        arch: ``platform.machine()`` (x86_64, aarch64, arm64).
        flags: each instruction set of :data:`X86_FLAGS` / :data:`ARM_FLAGS` → present.
        isa: the widest vector family: ``avx512``, ``avx2``, ``neon`` or ``other``.
        int8_dot: the CPU has an int8 dot-product instruction (VNNI on x86, dotprod on ARM).
        bf16: the CPU computes bf16 natively (AVX512-BF16 / AMX on x86, BF16 on ARM); otherwise bf16 is emulated.
        cores: logical CPUs this process may use.
        torch_capability: the kernel family torch dispatches to (``torch.backends.cpu.get_cpu_capability()``).
        cpu_family, cpu_model: x86 family/model numbers (Zen 3 is family 25 model 1, Zen 4 family 25 model 17).
        gpu: the CUDA device's name, or None.
    """

    cpu: str
    arch: str
    flags: dict[str, bool]
    isa: str
    int8_dot: bool
    bf16: bool
    cores: int
    torch_capability: str
    torch_version: str = field(default_factory=lambda: torch.__version__)
    cpu_family: int | None = None
    cpu_model: int | None = None
    gpu: str | None = None

    def summary(self) -> str:
        """One line for a report header or a benchmark: ``AMD EPYC, x86_64 AVX-512 (VNNI, BF16), 2 cores``."""
        isa = {"avx512": "AVX-512", "avx2": "AVX2", "neon": "NEON"}.get(self.isa, self.arch)
        dot = "VNNI" if self.arch in ("x86_64", "amd64") else "dotprod"
        extras = [dot if self.int8_dot else f"no {dot}", "BF16" if self.bf16 else "no BF16"]
        if self.flags.get("amx_int8"):
            extras.append("AMX")
        gpu = f"; GPU {self.gpu}" if self.gpu else ""
        return f"{self.cpu}, {self.arch} {isa} ({', '.join(extras)}), {self.cores} cores{gpu}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


@functools.cache
def probe() -> Machine:
    """Probe this machine once per process (cheap: reads ``/proc/cpuinfo``, asks torch)."""
    arch = platform.machine().lower()
    fields, present = _cpuinfo()
    x86 = arch in ("x86_64", "amd64", "i686", "x86")
    names = X86_FLAGS if x86 else ARM_FLAGS
    flags = {f: f in present for f in names}
    if x86:
        isa = "avx512" if flags["avx512f"] else "avx2" if flags["avx2"] else "other"
        int8_dot = flags["avx512_vnni"] or flags["avx_vnni"] or flags["amx_int8"]
        bf16 = flags["avx512_bf16"] or flags["amx_bf16"]
    else:
        isa = "neon" if arch in ("aarch64", "arm64") else "other"
        int8_dot, bf16 = flags["asimddp"], flags["bf16"]
    cpu = fields.get("model name") or fields.get("Model") or platform.processor() or arch
    return Machine(
        cpu=cpu.strip(), arch=arch, flags=flags, isa=isa, int8_dot=int8_dot, bf16=bf16, cores=_cores(),
        torch_capability=str(torch.backends.cpu.get_cpu_capability()),
        cpu_family=_int(fields.get("cpu family")), cpu_model=_int(fields.get("model")),
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    )


def _cpuinfo() -> tuple[dict[str, str], set[str]]:
    """The first processor's ``key: value`` fields and its flag words (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")[:200_000]
    except OSError:
        return {}, set()
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    words = set(re.split(r"\s+", fields.get("flags", "") + " " + fields.get("Features", "")))
    return fields, words


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None

"""One unit system for every size slimtorch prints or compares: decimal, labelled kB / MB / GB.

The CLI table, report.md, report.html, the planner's ``target.size_mb`` and ``resources.max_memory_mb``
all use these, so one model shows one size everywhere.
"""

from __future__ import annotations

KB = 1_000
MB = 1_000_000
GB = 1_000_000_000


def fmt_bytes(n: float | None) -> str:
    """``5.81 MB``, ``14.4 kB``, ``512 B``; ``—`` when unknown."""
    if n is None:
        return "—"
    for unit, scale in (("GB", GB), ("MB", MB), ("kB", KB)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_count(n: float | None) -> str:
    """``1.53M``, ``9.6k``; ``—`` when unknown."""
    if n is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)

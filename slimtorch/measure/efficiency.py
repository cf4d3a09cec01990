"""The one rule for "MACs fell but time did not": speedup ÷ MAC reduction, and when it is worth a warning.

The prune stage applies it to its quick eager-torch timing, the report to every measured model; both read it here.
"""

from __future__ import annotations

MIN_MAC_REDUCTION = 1.5  # below this, a small speedup is not worth a warning
MIN_EFFICIENCY = 0.5  # speedup ÷ MAC reduction below this: the hardware did not follow the count
MIN_MEASURABLE_REDUCTION = 1.01  # a MAC cut below this has no meaningful efficiency


def speedup_efficiency(mac_reduction: float, speedup: float) -> float | None:
    """``speedup / mac_reduction``, or None when the MACs barely fell (nothing to be efficient about)."""
    return speedup / mac_reduction if mac_reduction > MIN_MEASURABLE_REDUCTION else None


def lags_mac_cut(mac_reduction: float, speedup: float) -> bool:
    """True when the MACs fell by ``MIN_MAC_REDUCTION`` or more but the speedup is under ``MIN_EFFICIENCY`` of it.

    Example:
        >>> lags_mac_cut(4.0, 1.2), lags_mac_cut(4.0, 3.0), lags_mac_cut(1.2, 0.5)
        (True, False, False)
    """
    efficiency = speedup_efficiency(mac_reduction, speedup)
    return mac_reduction >= MIN_MAC_REDUCTION and efficiency is not None and efficiency < MIN_EFFICIENCY

"""Plain-spoken warnings where the hardware does not deliver what the counts promise."""

from __future__ import annotations

from typing import Any

from slimtorch.report.table import batches, by_name, fmt_bytes, p50, ratio

MIN_MAC_REDUCTION = 1.5  # below this, a small speedup is not worth a warning
MIN_EFFICIENCY = 0.5  # speedup ÷ MAC reduction
MIN_SPARSITY = 0.1  # fraction of zero weights that counts as "sparse"
SIZE_UNCHANGED = 0.9  # size kept above this fraction of the dense predecessor = stored dense


def hardware_warnings(report: dict[str, Any]) -> list[str]:
    """Warnings for models whose MAC cut outruns their speedup, and for sparsity stored dense."""
    base = by_name(report)[report["baseline"]]
    out: list[str] = []
    said: set[tuple[Any, ...]] = set()  # one warning per distinct situation, not per model in a chain
    for i, m in enumerate(report["models"]):
        if m["name"] == report["baseline"]:
            continue
        key: tuple[Any, ...] = ("speed", m.get("macs"), m.get("runtime"))
        if m.get("device", "cpu") != base.get("device", "cpu"):  # a ratio across devices says nothing about the model
            if ("device", m.get("device")) not in said:
                said.add(("device", m.get("device")))
                out.append(f"{m['name']} was timed on {m.get('device', 'cpu')} ({m.get('runtime', 'torch')}) and the baseline "
                           f"{base['name']} on {base.get('device', 'cpu')}: their latency ratio compares devices as well as "
                           "models. Set evaluate.device to time every torch model on the device you will deploy to.")
        elif key not in said and (w := _efficiency(base, m, batches(report))):
            said.add(key)
            out += w
        w, dense = _dense_sparsity(m, report["models"][:i])
        key = ("sparse", dense, m.get("nonzero_params"), m.get("size_bytes"))
        if w and key not in said:
            said.add(key)
            out += w
    return out


def _efficiency(base: dict[str, Any], m: dict[str, Any], sizes: list[str]) -> list[str]:
    mac_cut = ratio(base.get("macs"), m.get("macs"))
    if mac_cut is None or mac_cut < MIN_MAC_REDUCTION:
        return []
    slow = []
    for b in sizes:
        speedup = ratio(p50(base, b), p50(m, b))
        if speedup is not None and speedup / mac_cut < MIN_EFFICIENCY:
            slow.append(f"batch {b}: {speedup:.2f}× faster, efficiency {speedup / mac_cut:.2f}")
    if not slow:
        return []
    return [
        (f"{m['name']}: MACs fell {mac_cut:.1f}× but latency did not follow ({'; '.join(slow)}). "
        f"Fewer MACs are not fewer milliseconds on this runtime ({m.get('runtime', 'torch')} on {m.get('device', 'cpu')}, "
        f"{m.get('threads', '?')} thread(s)): "
        "per-operator overhead, memory traffic or kernels that do not exploit the change dominate.")
    ]


def _dense_sparsity(m: dict[str, Any], earlier: list[dict[str, Any]]) -> tuple[list[str], str | None]:
    """A warning when ``m`` is sparse but as big on disk as its dense predecessor (same params); and its name."""
    params, nonzero = m.get("params") or 0, m.get("nonzero_params") or 0
    if not params or 1 - nonzero / params < MIN_SPARSITY or m.get("size_bytes") is None:
        return [], None
    dense = next((e for e in reversed(earlier) if e.get("params") == params and e.get("size_bytes")
                  and e.get("nonzero_params", 0) > nonzero), None)
    if dense is None or m["size_bytes"] < SIZE_UNCHANGED * dense["size_bytes"]:
        return [], None
    packed = ""
    if m.get("compressed_bytes") and dense.get("compressed_bytes"):
        packed = (f" After zlib compression it is {fmt_bytes(m['compressed_bytes'])} against "
                  f"{fmt_bytes(dense['compressed_bytes'])} ({dense['compressed_bytes'] / m['compressed_bytes']:.2f}× smaller).")
    return [
        (f"{m['name']}: {100 * (1 - nonzero / params):.0f}% of its weights are zero, yet its artifact is "
        f"{fmt_bytes(m['size_bytes'])} against {fmt_bytes(dense['size_bytes'])} for {dense['name']}: zeros are stored "
        f"at full width. Unstructured sparsity saves space only after compression and gives no speed on dense kernels.{packed}")
    ], dense["name"]

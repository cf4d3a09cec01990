"""Plain-spoken warnings where the hardware does not deliver what the counts promise."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from slimtorch.measure.efficiency import lags_mac_cut
from slimtorch.measure.measurement import Measurement
from slimtorch.report.table import batches, by_name, fmt_bytes, p50, ratio, within_spread

MIN_SPARSITY = 0.1  # fraction of zero weights that counts as "sparse"
SIZE_UNCHANGED = 0.9  # size kept above this fraction of the dense predecessor = stored dense
SIDE_MODEL = re.compile(r"^\d+_[a-z]+_.+")  # <n>_<stage>_<extra>: a comparison or intermediate model of stage n
MAX_SLOWDOWN = 1.25  # a stage whose model is this much slower than its input's (outside the spread) is called out


def hardware_warnings(models: Sequence[Measurement], baseline: str) -> list[str]:
    """Warnings for models whose MAC cut outruns their speedup, and for sparsity stored dense.

    Args:
        models: every measured model, in run order.
        baseline: the name of the model the others are compared with.
    """
    base = by_name(models)[baseline]
    sizes = batches(models)
    out: list[str] = []
    said: set[tuple[Any, ...]] = set()  # one warning per distinct situation, not per model in a chain
    for i, m in enumerate(models):
        if m.name == baseline:
            continue
        key: tuple[Any, ...] = ("speed", m.macs, m.runtime)
        if m.device != base.device:  # a ratio across devices says nothing about the model
            if ("device", m.device) not in said:
                said.add(("device", m.device))
                out.append(f"{m.name} was timed on {m.device} ({m.runtime}) and the baseline "
                           f"{base.name} on {base.device}: their latency ratio compares devices as well as "
                           "models. Set evaluate.device to time every torch model on the device you will deploy to.")
        elif key not in said and (w := _efficiency(base, m, sizes)):
            said.add(key)
            out += w
        before = input_of(models[:i])
        if before is not None and m.device == before.device and (w := _slower_than_input(before, m, sizes)):
            out += w
        w, dense = _dense_sparsity(m, models[:i])
        key = ("sparse", dense, m.nonzero_params, m.size_bytes)
        if w and key not in said:
            said.add(key)
            out += w
    return out


def _efficiency(base: Measurement, m: Measurement, sizes: list[str]) -> list[str]:
    mac_cut = ratio(base.macs, m.macs)
    if mac_cut is None:
        return []
    slow = []
    for b in sizes:
        speedup = ratio(p50(base, b), p50(m, b))
        if speedup is not None and lags_mac_cut(mac_cut, speedup):
            slow.append(f"batch {b}: {speedup:.2f}× faster, efficiency {speedup / mac_cut:.2f}")
    if not slow:
        return []
    return [
        (f"{m.name}: MACs fell {mac_cut:.1f}× but latency did not follow ({'; '.join(slow)}). "
        f"Fewer MACs are not fewer milliseconds on this runtime ({m.runtime} on {m.device}, "
        f"{m.threads} thread(s)): "
        "per-operator overhead, memory traffic or kernels that do not exploit the change dominate.")
    ]


def input_of(earlier: Sequence[Measurement]) -> Measurement | None:
    """The model the next stage started from: the latest earlier model that is not a stage's side model
    (``2_distill_labels_only``, ``1_lora_full_finetune``, ``1_distill_assistant`` are reported, not passed on)."""
    return next((e for e in reversed(earlier) if not SIDE_MODEL.match(e.name)), None)


def _slower_than_input(before: Measurement, m: Measurement, sizes: list[str]) -> list[str]:
    """A warning when ``m`` runs clearly slower than ``before``, the model its stage started from."""
    slow = []
    for b in sizes:
        t0, t1 = p50(before, b), p50(m, b)
        if t0 and t1 and t1 > MAX_SLOWDOWN * t0 and not within_spread(before, m, b):
            slow.append(f"batch {b}: {t1:.3g} ms against {t0:.3g} ms, {t1 / t0:.2f}× slower")
    if not slow:
        return []
    hint = ""
    if m.runtime == "onnxruntime" and m.stage == "quantize":
        hint = (" onnxruntime's dynamic int8 runs convolutions as ConvInteger, which is often slower than float "
                "convolution on CPUs: try `mode: static_int8` (calibrated QDQ) for convolutional models, or keep the float model.")
    return [f"{m.name} is slower than {before.name}, the model its {m.stage} stage started from ({'; '.join(slow)}).{hint}"]


def _dense_sparsity(m: Measurement, earlier: Sequence[Measurement]) -> tuple[list[str], str | None]:
    """A warning when ``m`` is sparse but as big on disk as its dense predecessor (same params); and its name."""
    params, nonzero = m.params, m.nonzero_params
    if not params or 1 - nonzero / params < MIN_SPARSITY or m.size_bytes is None:
        return [], None
    dense = next((e for e in reversed(earlier) if e.params == params and e.size_bytes and e.nonzero_params > nonzero), None)
    if dense is None or dense.size_bytes is None or m.size_bytes < SIZE_UNCHANGED * dense.size_bytes:
        return [], None
    packed = ""
    if m.compressed_bytes and dense.compressed_bytes:
        packed = (f" After zlib compression it is {fmt_bytes(m.compressed_bytes)} against "
                  f"{fmt_bytes(dense.compressed_bytes)} ({dense.compressed_bytes / m.compressed_bytes:.2f}× smaller).")
    return [
        (f"{m.name}: {100 * (1 - nonzero / params):.0f}% of its weights are zero, yet its artifact is "
        f"{fmt_bytes(m.size_bytes)} against {fmt_bytes(dense.size_bytes)} for {dense.name}: zeros are stored "
        f"at full width. Unstructured sparsity saves space only after compression and gives no speed on dense kernels.{packed}")
    ], dense.name

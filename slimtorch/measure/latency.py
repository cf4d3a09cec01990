"""Wall-clock latency of a forward pass on the model's own runtime, timed honestly.

Each call pins the intra-op thread count (torch's, or the onnxruntime wrapper's), runs ``warmup``
untimed passes, then ``repeats`` timed ones, and reports the median (p50), p90, mean, std and min in
milliseconds. The thread count is restored afterwards. A time budget bounds both, as timeit's autorange
does the other way round: a fast model gets every pass asked for, a slow one (a 135M-parameter LM at
batch 64 on a laptop CPU) stops after its budget with at least one warm-up and three timed passes. On a GPU each pass is timed with CUDA events
and the device is synchronised after it: kernels run asynchronously, so a host clock alone would time
only the launches.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace

import torch
from torch import nn

from slimtorch.core import Batch, forward
from slimtorch.device import model_device, synchronize
from slimtorch.measure.energy import EnergyMeter
from slimtorch.measure.measurement import LatencyStats
from slimtorch.measure.modes import eval_mode
from slimtorch.measure.onnx_graph import runs_onnx_graph

log = logging.getLogger(__name__)

# Attribute names an onnxruntime wrapper may use for its intra-op thread count.
ORT_THREAD_ATTRS = ("threads", "intra_op_num_threads", "num_threads")


def time_latency(
    model: nn.Module,
    example_input: Batch,
    *,
    warmup: int,
    repeats: int,
    threads: int,
    max_seconds: float | None = None,
) -> LatencyStats:
    """Time ``forward(model, example_input)``; returns its p10/p50/p90, mean, std, min (ms) and ``repeats``.

    Args:
        warmup: untimed passes first (allocator, caches, lazy init; ≥ 20 advised for batch 1 eager).
        repeats: timed passes (at least 3 are always run).
        threads: intra-op threads for the run; the previous setting is restored afterwards.
        max_seconds: optional time budget: warm-up stops once it has spent half of it (after one pass), the
            timed passes once they have spent the other half (after three); the number run is in ``repeats``.
    """
    with eval_mode(model), pinned_threads(model, threads), torch.inference_mode():
        warm_up(model, example_input, warmup, None if max_seconds is None else max_seconds / 2)
        samples = _timed(model, example_input, max(repeats, 3), None if max_seconds is None else max_seconds / 2)
    return summarize(samples)


def warm_up(model: nn.Module, example_input: Batch, passes: int, max_seconds: float | None) -> int:
    """Up to ``passes`` untimed forward passes, stopping once ``max_seconds`` are spent (one pass at least if ``passes``)."""
    start = time.perf_counter()
    for i in range(passes):
        forward(model, example_input)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            return i + 1
    return passes


def _timed(model: nn.Module, example_input: Batch, repeats: int, max_seconds: float | None, min_passes: int = 3) -> list[float]:
    where = model_device(model)
    if where.type == "cuda":
        return _timed_cuda(model, example_input, repeats, max_seconds, where, min_passes)
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(repeats):
        synchronize(where)  # a no-op on CPU; on MPS the queue must be empty before the clock starts
        t0 = time.perf_counter()
        forward(model, example_input)
        synchronize(where)
        samples.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and i + 1 >= min_passes and time.perf_counter() - start > max_seconds:
            break
    return samples


def _timed_cuda(model: nn.Module, example_input: Batch, repeats: int, max_seconds: float | None,
                where: torch.device, min_passes: int = 3) -> list[float]:
    """Per-pass GPU time between two CUDA events; synchronised after each pass, as one request at a time runs."""
    samples: list[float] = []
    start = time.perf_counter()
    synchronize(where)
    for i in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        forward(model, example_input)
        end.record()
        end.synchronize()
        samples.append(float(begin.elapsed_time(end)))
        if max_seconds is not None and i + 1 >= min_passes and time.perf_counter() - start > max_seconds:
            break
    return samples


def time_interleaved(
    entries: list[tuple[nn.Module, dict[str, Batch]]],
    *,
    warmup: int,
    repeats: int,
    threads: int,
    rounds: int = 5,
    max_seconds: float | None = None,
    energy: EnergyMeter | None = None,
) -> list[dict[str, LatencyStats]]:
    """Time several models side by side: ``rounds`` passes over every model and batch, order rotating.

    A machine's speed drifts over minutes (other jobs, clocks, caches). Timing each model right after
    its stage puts that drift into the ratios; timing all of them in interleaved rounds spreads it
    evenly, so a ratio compares models, not moments.

    Args:
        entries: ``(model, {"<batch>": example_input})`` per model.
        repeats: timed passes per model and batch in total, split over the rounds.
        max_seconds: optional budget per model and batch, as in :func:`time_latency`: half for warm-up, the
            rest split over the rounds (each round still times one pass at least).
        energy: optional meter that reads the energy counter around each round's timed passes.

    Returns:
        per entry, ``{"<batch>": summarize(...)}`` with ``rounds`` set.
    """
    per_round = max(1, math.ceil(max(repeats, 3) / rounds))
    round_budget = None if max_seconds is None else max_seconds / 2 / rounds
    samples: list[dict[str, list[float]]] = [{b: [] for b in inputs} for _, inputs in entries]
    with ExitStack() as modes:
        for model, inputs in entries:
            modes.enter_context(eval_mode(model))
            with pinned_threads(model, threads), torch.inference_mode():
                for x in inputs.values():
                    warm_up(model, x, warmup, None if max_seconds is None else max_seconds / 2)
        for r in range(rounds):
            order = list(range(len(entries)))
            order = order[r % len(order):] + order[: r % len(order)]  # rotate: no model always goes first
            for i in order:
                model, inputs = entries[i]
                with pinned_threads(model, threads), torch.inference_mode():
                    for b, x in inputs.items():
                        forward(model, x)  # one untimed pass: the model's caches were just evicted by the others
                        def passes(model: nn.Module = model, x: Batch = x) -> list[float]:
                            return _timed(model, x, per_round, round_budget, min_passes=1)

                        samples[i][b] += passes() if energy is None else energy.around(i, b, passes)
    return [{b: replace(summarize(s), rounds=rounds) for b, s in per_model.items()} for per_model in samples]


def quick_latency_ms(model: nn.Module, example_input: Batch, budget_s: float = 1.0, max_calls: int = 30) -> float:
    """Median ms of one eager forward in eval mode, after 10 warm-up passes: the quick check a prune stage or the
    planner compares before and after a change, not the report's measurement (:func:`time_latency`)."""
    with eval_mode(model), torch.inference_mode():
        return 1e3 * median_call_seconds(lambda: forward(model, example_input), budget_s, max_calls, warmup=10)


def median_call_seconds(fn: Callable[[], object], budget_s: float, max_calls: int = 200, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over calls until ``budget_s`` is spent or ``max_calls`` ran, after ``warmup`` untimed calls.

    For kernels rather than models (no thread pinning or eval mode): a slow one (a reference loop, a second a call)
    is timed once, which ranks it and keeps the caller quick.
    """
    for _ in range(max(warmup, 1)):
        fn()  # pack weights, build sessions
    times: list[float] = []
    start = time.perf_counter()
    while not times or (time.perf_counter() - start < budget_s and len(times) < max_calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def summarize(samples_ms: list[float]) -> LatencyStats:
    """p10/p50/p90 (nearest-rank on the sorted samples), mean, std, min and count of timings in ms."""
    s = sorted(samples_ms)
    n = len(s)
    return LatencyStats(
        p50=round(statistics.median(s), 4),
        p10=round(s[max(0, math.ceil(0.1 * n) - 1)], 4),
        p90=round(s[max(0, math.ceil(0.9 * n) - 1)], 4),
        mean=round(statistics.fmean(s), 4),
        std=round(statistics.pstdev(s), 4),
        min=round(s[0], 4),
        repeats=n,
    )


@contextmanager
def pinned_threads(model: nn.Module, threads: int) -> Iterator[None]:
    """Run torch (and an onnxruntime wrapper) on ``threads`` intra-op threads; restore both afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    ort_attr = next((a for a in ORT_THREAD_ATTRS if hasattr(model, a)), None) if runs_onnx_graph(model) else None
    ort_previous = getattr(model, ort_attr) if ort_attr else None
    if ort_attr:
        setattr(model, ort_attr, threads)
    elif runs_onnx_graph(model):
        log.warning("onnxruntime wrapper %s has no thread-count attribute (%s); timing with its own setting",
                    type(model).__name__, ", ".join(ORT_THREAD_ATTRS))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        if ort_attr:
            setattr(model, ort_attr, ort_previous)

"""``measure(model, ...)``: one call that fills a :class:`Measurement` for the report card."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from slimtorch.artifact import FORMATS, format_of
from slimtorch.device import to_device
from slimtorch.errors import ShapeMismatchError
from slimtorch.measure import llm
from slimtorch.measure.config import EvaluateConfig
from slimtorch.measure.energy import EnergyMeter
from slimtorch.measure.evaluate import check_outputs_cover_labels, eval_batches, robustness, run_batches, task_metrics
from slimtorch.measure.latency import pinned_threads, time_interleaved, time_latency
from slimtorch.measure.macs import count_macs_noted
from slimtorch.measure.measurement import LatencyStats, Measurement
from slimtorch.measure.onnx_graph import duplicated_tables, onnx_model_of, runs_onnx_graph
from slimtorch.measure.params import count_nonzero, count_params
from slimtorch.measure.placement import measuring_device, peak_memory, placed_on
from slimtorch.measure.size import compressed_bytes, dir_size_bytes

if TYPE_CHECKING:
    from slimtorch.data.bundle import DataBundle

log = logging.getLogger(__name__)

NOISY_SPREAD = 1.5  # p90 / p50 above this is flagged as a noisy timing


def measure(
    model: nn.Module,
    *,
    name: str,
    stage: str,
    data: DataBundle,
    config: EvaluateConfig,
    artifact_dir: Path | None = None,
    baseline_outputs: Tensor | llm.LLMReference | None = None,
    latency_budget_s: float | None = None,
    time_now: bool = True,
    device: torch.device | None = None,
) -> Measurement:
    """Measure ``model``: counts, bytes, MACs, latency per batch size, task metric, agreement, robustness.

    Args:
        name, stage: how the model is named in the report and which stage produced it.
        data, config: eval inputs come from ``data.loader(config.split)`` (capped by
            ``config.max_eval_examples``); latency inputs from ``data.example_batch(b)``.
        artifact_dir: the saved artifact; ``size_bytes`` is the total of its files. None → no size.
        baseline_outputs: the baseline's eval outputs (:func:`outputs_on`) for agreement / cosine; for a causal LM
            its :class:`~slimtorch.measure.llm.LLMReference` (top-1 tokens, log-probabilities, samples).
        latency_budget_s: optional cap on seconds per batch size (fewer repeats for slow models); the smaller of it and
            ``config.latency.max_seconds`` applies.
        time_now: False leaves ``latency_ms`` empty for :func:`retime_side_by_side` to fill (a run times
            all its models together at the end, so machine drift does not enter the ratios).
        device: the device the run trains on; ``config.device: auto`` measures there (see
            :mod:`slimtorch.measure.placement`). None → the CPU.

    Raises:
        ShapeMismatchError: ``baseline_outputs`` do not match this model's outputs.
    """
    start = time.perf_counter()
    cost: dict[str, float] = {}
    notes: list[str] = []
    lm = llm.causal_lm_of(model)
    data = llm.with_model_tokens(data, model)  # a causal LM's inputs come from its own tokenizer

    def timed(part: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        cost[part] = round(time.perf_counter() - t0, 4)
        return result

    params, nonzero = timed("params", lambda: (count_params(model), count_nonzero(model)))
    if runs_onnx_graph(model):
        notes.append("params and nonzeros are counted from the ONNX graph's initializers (quantization scales and zero points included).")
        graph = onnx_model_of(model)
        if graph is not None and (twice := duplicated_tables(graph)):
            notes.append(f"the ONNX graph stores a tied table twice ({'; '.join(twice)}): once for the embedding lookup and once, "
                         "transposed, for the output layer, so its params and bytes count it twice.")
    size, packed = timed("size", lambda: _sizes(artifact_dir, model))
    macs, mac_notes = timed("macs", lambda: count_macs_noted(model, data.example_batch(1, split=config.split)))
    notes += mac_notes
    lat = config.latency
    runtime = getattr(model, "slimtorch_runtime", "torch")
    # Causal LMs are measured on the CPU: their decode timings and perplexity windows have their own loop.
    where = torch.device("cpu") if lm is not None else measuring_device(config.device, device, model)
    with placed_on(model, where, data.example_batch(1, split=config.split), notes) as where, peak_memory(where) as peak:
        budget = min((s for s in (latency_budget_s, lat.max_seconds) if s is not None), default=None)
        latency = timed("latency", lambda: {
            str(b): time_latency(model, to_device(data.example_batch(b, split=config.split), where), warmup=lat.warmup,
                                 repeats=lat.repeats, threads=lat.threads, max_seconds=budget)
            for b in lat.sizes_for(lm is not None)}) if time_now else {}
        notes += _latency_notes(latency)
        if lm is None:
            reference = baseline_outputs if isinstance(baseline_outputs, Tensor) else None
            metrics, agree, robust = _task_metrics(model, name, data, config, reference, timed, notes)
    common = {"name": name, "stage": stage, "params": params, "nonzero_params": nonzero, "size_bytes": size,
              "compressed_bytes": packed, "macs": macs, "runtime": runtime, "threads": lat.threads, "latency_ms": latency,
              "cost_s": cost, "device": str(where), "peak_memory_bytes": peak.bytes}
    if lm is None:
        return Measurement(**common, metrics=metrics, agreement=agree, robustness=robust, notes=notes,
                           seconds=round(time.perf_counter() - start, 3))
    llm_reference = baseline_outputs if isinstance(baseline_outputs, llm.LLMReference) else None
    result = timed("llm", lambda: llm.measure_llm(model, data, config, llm_reference))
    return Measurement(
        **common, metrics=result.metrics, agreement=result.metrics.get("token_agreement"), robustness={},
        notes=[*notes, "causal LM: robustness to input noise does not apply to token ids; see perplexity, agreement and KL."],
        seconds=round(time.perf_counter() - start, 3), decode_tokens_per_s=result.decode_tokens_per_s,
        llm=result.facts,
    )


def _task_metrics(model: nn.Module, name: str, data: DataBundle, config: EvaluateConfig, baseline_outputs: Tensor | None,
                  timed: Callable[[str, Callable[[], Any]], Any], notes: list[str],
                  ) -> tuple[dict[str, Any], float | None, dict[str, float]]:
    """The task metric, agreement and robustness of a classifier or encoder (notes are appended to ``notes``)."""
    lat = config.latency
    batches = eval_batches(data, config)
    # Metric passes run on the same pinned threads: on a shared CPU, spare OpenMP threads spinning on
    # tiny ops cost more than the ops (a 2k-parameter MLP: 0.2 ms on 1 thread, 240 ms on 2 under load).
    with pinned_threads(model, lat.threads):
        outputs, labels = timed("accuracy", lambda: run_batches(model, batches))
    if baseline_outputs is not None and tuple(baseline_outputs.shape) != tuple(outputs.shape):
        raise ShapeMismatchError(
            f"{name}: outputs have shape {tuple(outputs.shape)} but the baseline's have {tuple(baseline_outputs.shape)}; "
            "compute baseline_outputs with outputs_on(baseline, data, config) using the same evaluate config."
        )
    if data.task == "classification":
        check_outputs_cover_labels(outputs, int(labels.max()) + 1, name)
    metrics, agree = task_metrics(outputs, labels, data.task, baseline_outputs)
    if data.task != "classification" and baseline_outputs is None:
        notes.append("cosine not measured: no baseline outputs were given to compare against.")
    reference = baseline_outputs if baseline_outputs is not None else outputs
    with pinned_threads(model, lat.threads):
        robust, robust_notes = timed("robustness", lambda: robustness(model, batches, list(config.noise_levels), data.task, reference))
    notes += robust_notes
    return metrics, agree, robust


def _sizes(artifact_dir: Path | None, model: nn.Module) -> tuple[int | None, int | None]:
    """Bytes of the saved model (raw, compressed): the file its runtime loads where the format names one, else the folder."""
    if artifact_dir is None:
        return None, None
    shipped = FORMATS.get(format_of(model)).shipped
    path = artifact_dir / shipped if shipped is not None else artifact_dir
    return dir_size_bytes(path), compressed_bytes(path)


def retime_side_by_side(pairs: list[tuple[Measurement, nn.Module]], data: DataBundle, config: EvaluateConfig) -> None:
    """Time every model together in interleaved rounds and put those figures in their measurements.

    Each model is timed where it was measured (``Measurement.device``); on a GPU it is moved there for the
    rounds and back afterwards. The latency notes are rebuilt from the new timings; each measurement
    says how it was timed.
    """
    lat = config.latency
    t0 = time.perf_counter()
    with ExitStack() as stack:
        entries = []
        for m, model in pairs:
            where = stack.enter_context(placed_on(model, torch.device(m.device), data.example_batch(1, split=config.split), m.notes))
            m.device = str(where)
            sizes = lat.sizes_for(llm.causal_lm_of(model) is not None)
            entries.append((model, {str(b): to_device(data.example_batch(b, split=config.split), where) for b in sizes}))
        meter = EnergyMeter(config.energy, [m.device for m, _ in pairs])
        results = time_interleaved(entries, warmup=lat.warmup, repeats=lat.repeats, threads=lat.threads, max_seconds=lat.max_seconds,
                                   energy=meter)
    share = round((time.perf_counter() - t0) / max(len(pairs), 1), 4)
    for i, ((m, _), latency) in enumerate(zip(pairs, results)):
        m.latency_ms = latency
        m.energy = meter.result(i)
        m.notes = [n for n in m.notes if not n.startswith(("batch-", "timed side by side"))] + _latency_notes(latency)
        m.notes.append(f"timed side by side with the run's other models in {next(iter(latency.values())).rounds} "
                       "interleaved rounds at the end of the run")
        m.cost_s["latency"] = share


def _latency_notes(latency: dict[str, LatencyStats]) -> list[str]:
    notes = []
    for batch, t in latency.items():
        if t.p50 > 0 and t.p90 / t.p50 > NOISY_SPREAD:
            notes.append(f"batch-{batch} latency is noisy: p90 is {t.p90 / t.p50:.1f}× p50 "
                         "(shared CPU or per-op overhead); compare p50s with care.")
    return notes

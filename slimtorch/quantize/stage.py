"""The ``quantize`` stage: a torch model in, a quantized model (torch, onnxruntime or OpenVINO) out.

The stage resolves the runtime (``auto``: :func:`_fastest_runtime`), looks the backend up in
:data:`~slimtorch.quantize.backends.BACKENDS`, and builds the record from the backend's typed result.
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from slimtorch.core import RunContext, Stage, StageRecord
from slimtorch.errors import UnsupportedModuleError
from slimtorch.export.onnx import input_names_of, plain_copy
from slimtorch.measure.config import EvaluateConfig
from slimtorch.measure.latency import time_interleaved
from slimtorch.measure.llm import causal_lm_of, with_model_tokens
from slimtorch.measure.machine import probe
from slimtorch.models.attrs import set_attrs_
from slimtorch.quantize import _openvino, dynamic_qat
from slimtorch.quantize.backends import BACKENDS, Source, backend_key, fidelity
from slimtorch.quantize.config import QuantizeConfig
from slimtorch.quantize.details import OpenVINOFacts, QuantizeDetails, RuntimeAuto, RuntimeCandidate
from slimtorch.runtime import OpenVINOModule

REDUCE_RANGE_NOTE = ("7-bit int8 weights (reduce_range): onnxruntime's int8 GEMM on this CPU (no VNNI) sums uint8 x int8 "
                     "pairs in saturating int16, which 8-bit weights overflow; set quantize.reduce_range to choose.")


def _with_reduce_range(cfg: QuantizeConfig) -> QuantizeConfig:
    """``reduce_range: null`` resolved for onnxruntime/OpenVINO int8: 7-bit weights where this CPU's onnxruntime int8 GEMM
    saturates (asked of onnxruntime itself, :func:`~slimtorch.quantize.dynamic_qat.u8s8_saturates`), 8-bit elsewhere."""
    if cfg.reduce_range is not None or cfg.runtime == "torch" or cfg.mode not in ("dynamic_int8", "static_int8"):
        return cfg
    return cfg.model_copy(update={"reduce_range": dynamic_qat.u8s8_saturates()})


def quantize(model: nn.Module, ctx: RunContext, requested: QuantizeConfig) -> tuple[nn.Module, QuantizeDetails, list[str]]:
    """Build ``requested`` (a runtime, not auto) from ``model`` (not modified): the model, its details and its notes.

    Raises:
        UnsupportedModuleError: the backend cannot quantize this model (e.g. torch int8 without an ``nn.Linear``).
    """
    _openvino.require_extras(requested.runtime, requested.quantizer)
    cfg = _with_reduce_range(requested)
    # Quantized artifacts run on CPU kernels (onnxruntime, OpenVINO, torch's packed int8/int4): built from the CPU.
    float_cpu = plain_copy(model).to("cpu")
    ctx = dataclasses.replace(ctx, data=with_model_tokens(ctx.data, model))  # a causal LM reads its own tokens
    source = Source(model=model, float_cpu=float_cpu, example=ctx.data.example_batch(4))
    built = BACKENDS.get(backend_key(cfg))(source, ctx, cfg)
    out = set_attrs_(built.model, slimtorch_spec=getattr(model, "slimtorch_spec", None))
    out.eval()
    is_int8_graph = cfg.runtime != "torch" and cfg.mode in ("dynamic_int8", "static_int8")
    details = QuantizeDetails(backend=cfg.backend(), inputs=input_names_of(source.example), result=built.details,
                              fidelity=fidelity(float_cpu, out, ctx.data.example_batch(32)),
                              reduce_range=cfg.reduce_range if is_int8_graph else None)
    notes = ([REDUCE_RANGE_NOTE] if requested.reduce_range is None and cfg.reduce_range else []) + built.notes
    if isinstance(out, OpenVINOModule):
        details.openvino = OpenVINOFacts(**out.runtime_facts())
        notes += details.openvino.note(cfg.mode)
    return out, details, notes


class QuantizeStage(Stage[QuantizeConfig], kind="quantize"):
    """Quantize with onnxruntime (dynamic/static int8, fp16), OpenVINO or torch (dynamic int8, weight-only int8/int4, bf16).

    Pruning masks are baked into a copy first; the input model is not modified.
    """

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        if self.config.runtime == "auto":
            return _fastest_runtime(self.config, model, ctx)
        out, details, notes = quantize(model, ctx, self.config)
        return out, self.record(details=details.to_json(), notes=notes)


# runtime: auto keeps the fastest candidate whose fidelity to the float model is within this of the best candidate's
AUTO_FIDELITY_TOLERANCE = {"argmax_agreement": 0.005, "output_cosine": 0.002}


def fastest_faithful(fidelities: list[float], costs: list[float], tolerance: float) -> tuple[int, list[int]]:
    """The index of the cheapest candidate among those within ``tolerance`` of the best fidelity, and those indices.

    Example:
        >>> fastest_faithful([1.0, 0.97, 0.998], [3.0, 1.0, 2.0], 0.005)  # the fastest lost 3 points: not kept
        (2, [0, 2])
    """
    best = max(fidelities)
    faithful = [i for i, f in enumerate(fidelities) if f >= best - tolerance]
    return min(faithful, key=lambda i: costs[i]), faithful


def _fastest_runtime(cfg: QuantizeConfig, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
    """``runtime: auto``: build the mode on every candidate runtime, time them side by side here, keep the fastest faithful one.

    The float input model is timed in the same interleaved rounds, so the record also says whether int8 pays off
    on this machine at all. Each candidate's time per batch size, fidelity and why it won or lost are in
    ``details["runtime_auto"]``.
    """
    evaluate = ctx.evaluate or EvaluateConfig()
    lat = evaluate.latency
    sizes = lat.sizes_for(causal_lm_of(model) is not None)
    built: list[tuple[QuantizeConfig, nn.Module, QuantizeDetails, list[str]]] = []
    refused: dict[str, str] = {}
    for runtime in cfg.candidate_runtimes():
        candidate = cfg.model_copy(update={"runtime": runtime})
        try:
            built.append((candidate, *quantize(model, ctx, candidate)))
        except UnsupportedModuleError as exc:  # e.g. torch int8 on a model without nn.Linear: the other runtimes still compete
            refused[runtime] = str(exc)
    if not built:
        raise UnsupportedModuleError(f"quantize mode {cfg.mode!r}: no runtime could build it for this model: "
                                     + " | ".join(f"{r}: {why}" for r, why in refused.items()))
    data = with_model_tokens(ctx.data, model)
    inputs = {str(b): data.example_batch(b) for b in sizes}
    float_model = plain_copy(model).to("cpu").eval()
    timings = time_interleaved([(float_model, inputs), *[(out, inputs) for _, out, _, _ in built]], warmup=5, repeats=15,
                               threads=lat.threads, rounds=3, max_seconds=min(lat.max_seconds or 4.0, 4.0))
    float_p50 = {b: timings[0][b].p50 for b in inputs}
    p50 = [{b: stats[b].p50 for b in inputs} for stats in timings[1:]]
    metric = "argmax_agreement" if ctx.task == "classification" else "output_cosine"

    def log_time(i: int) -> float:  # the geometric mean over batch sizes: each batch size counts the same
        return sum(math.log(max(p50[i][b], 1e-9)) for b in inputs)

    fidelities = [getattr(details.fidelity, metric) for _, _, details, _ in built]
    win, faithful = fastest_faithful(fidelities, [log_time(i) for i in range(len(built))], AUTO_FIDELITY_TOLERANCE[metric])
    rows = []
    for i, (candidate, _, details, _) in enumerate(built):
        why = ("fastest" + (" of the faithful ones" if len(faithful) < len(built) else "")) if i == win else (
            f"{metric} {fidelities[i]:.4f} is more than {AUTO_FIDELITY_TOLERANCE[metric]} below the best"
            if i not in faithful else f"{math.exp((log_time(i) - log_time(win)) / len(inputs)):.2f}x slower")
        rows.append(RuntimeCandidate(runtime=candidate.runtime, why=why, is_chosen=i == win, backend=details.backend, metric=metric,
                                     fidelity=fidelities[i], p50_ms=p50[i],
                                     speedup_vs_float={b: round(float_p50[b] / p50[i][b], 3) for b in inputs}))
    rows += [RuntimeCandidate(runtime=r, why=f"cannot build it: {why}") for r, why in refused.items()]
    chosen, out, details, notes = built[win]
    details.runtime_auto = RuntimeAuto(candidates=rows, timed_on=probe().summary(), threads=lat.threads, float_p50_ms=float_p50)
    speed = ", ".join(f"b{b} {rows[win].speedup_vs_float[b]:.2f}x" for b in inputs)
    others = "; ".join(f"{r.runtime}: {r.why[:200]}" for r in rows if not r.is_chosen)
    lead = [f"runtime: auto chose {chosen.runtime} ({speed} the float model's speed, timed side by side on "
            f"{probe().summary()})" + (f"; {others}" if others else "")]
    if all(rows[win].speedup_vs_float[b] < 1 for b in inputs):
        lead.append(f"WARNING: no runtime runs {cfg.mode} faster than the float model on this machine "
                    f"({probe().summary()}); the quantized model is smaller, not faster. `slimtorch doctor` "
                    "times each kernel family here.")
    # the record of the runtime that won, as a stage with that runtime writes it
    return out, QuantizeStage(chosen).record(details=details.to_json(), notes=lead + notes)

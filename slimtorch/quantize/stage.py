"""The ``quantize`` stage: a torch model in, a quantized model (torch or onnxruntime) out."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from slimtorch.core import Batch, RunContext, Stage, StageRecord, forward
from slimtorch.errors import NotCalibratedError, UnsupportedModuleError
from slimtorch.export.onnx import input_names_of, plain_copy
from slimtorch.measure.config import EvaluateConfig
from slimtorch.measure.latency import time_interleaved
from slimtorch.measure.llm import causal_lm_of, with_model_tokens
from slimtorch.measure.machine import probe
from slimtorch.models.attrs import set_attrs_
from slimtorch.quantize import _openvino, _ort, _torch, awq, dynamic_qat, gptq, kernels, qat, sensitivity, smooth
from slimtorch.quantize._ort_transformer import encoder_onnx
from slimtorch.quantize.config import QATConfig, QuantizeConfig
from slimtorch.quantize.sensitivity import MixedPrecisionResult
from slimtorch.runtime import OpenVINOModule, OrtModule

log = logging.getLogger(__name__)


def calibration_feeds(ctx: RunContext, cfg: QuantizeConfig) -> list[dict[str, np.ndarray]]:
    """Up to ``cfg.calibration_batches`` input batches of the calibration split, as ORT feed dicts."""
    dataset = getattr(ctx.data, cfg.calibration_split, None)
    if dataset is None or len(dataset) == 0:
        raise NotCalibratedError(
            f"static int8 needs calibration inputs, but the {cfg.calibration_split!r} split is empty or missing. "
            "Set quantize.calibration_split to a non-empty split (train, val or transfer), or use mode: dynamic_int8."
        )
    feeds = []
    for i, (x, _) in enumerate(ctx.data.loader(dataset, shuffle=True, seed=ctx.seed)):
        if i >= cfg.calibration_batches:
            break
        named = x if isinstance(x, dict) else {"input": x}
        feeds.append({k: v.numpy() for k, v in named.items()})
    return feeds


def _smoothed_copy(model: nn.Module, ctx: RunContext, cfg: QuantizeConfig, alpha: float) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` whose Linear inputs are smoothed (SmoothQuant) on ``cfg.calibration_batches`` of its split."""
    smoothed = copy.deepcopy(model).eval()
    loader = ctx.data.loader(cfg.calibration_split, shuffle=True, seed=ctx.seed)
    result = smooth.smooth_(smoothed, (x for x, _ in itertools.islice(loader, cfg.calibration_batches)), alpha)
    return smoothed, result.to_details()


def _ort_quantize(model: nn.Module, ctx: RunContext, cfg: QuantizeConfig, example: Batch) -> tuple[nn.Module, dict[str, Any]]:
    facts: dict[str, Any] = {}
    if cfg.smooth is not None:
        model, facts["smoothing"] = _smoothed_copy(model, ctx, cfg, cfg.smooth)
    fp32, graph_facts = encoder_onnx(model, example, cfg.opset, cfg.attention)
    details: dict[str, Any] = {"onnx_fp32_bytes": len(fp32), **facts, **graph_facts}
    excluded = _ort_nodes_matching(fp32, cfg.exclude)
    if cfg.mode == "dynamic_int8":
        graph = fp32
        if cfg.embedding_bits == 4:
            graph, tables = _ort.block_quantize_embeddings(fp32, cfg.embedding_block_size)
            details["embedding_4bit_nodes"] = tables
        quantized = _ort.quantize_dynamic(graph, per_channel=cfg.per_channel, reduce_range=bool(cfg.reduce_range),
                                          nodes_to_exclude=excluded)
    elif cfg.mode == "static_int8":
        feeds = calibration_feeds(ctx, cfg)
        if cfg.quantizer == "nncf":
            quantized = _openvino.nncf_quantize(fp32, feeds, nodes_to_exclude=excluded)
        else:
            quantized = _ort.quantize_static(fp32, feeds, per_channel=cfg.per_channel, reduce_range=bool(cfg.reduce_range),
                                             calibrate_method=cfg.calibrate_method, nodes_to_exclude=excluded)
        details["calibration_examples"] = int(sum(len(next(iter(f.values()))) for f in feeds))
        details["calibration_batches"] = len(feeds)
    elif cfg.mode == "fp16":
        quantized = _ort.convert_fp16(fp32)
    else:  # fp32 on OpenVINO: the exported graph as it is
        quantized = fp32
    if cfg.max_drop is not None or cfg.sensitivity:
        quantized, mixed = _mixed_precision(fp32, ctx, cfg, excluded)
        details["quant_sensitivity"] = mixed.to_details()
        excluded = excluded + mixed.float_layers
    details.update({"onnx_bytes": len(quantized), "bytes_ratio_vs_onnx_fp32": round(len(quantized) / len(fp32), 4),
                    "excluded_nodes": excluded})
    if cfg.mode in ("dynamic_int8", "static_int8"):  # most weights left float, nodes kept float for -inf ranges: said in the report
        details["int8_notes"] = _ort.int8_notes(quantized, cfg.mode.replace("_", " "))
    meta = {"mode": cfg.mode, "opset": cfg.opset, "backend": cfg.backend()}
    return graph_module(quantized, cfg, meta), details


def graph_module(onnx_bytes: bytes, cfg: QuantizeConfig, meta: dict[str, Any]) -> nn.Module:
    """The ONNX graph in the runtime ``cfg.runtime`` names: an :class:`OrtModule` or an :class:`OpenVINOModule`."""
    if cfg.runtime == "openvino":
        return OpenVINOModule(onnx_bytes, threads=cfg.threads, meta=meta)
    return OrtModule(onnx_bytes, threads=cfg.threads, meta=meta)


def _qat_quantize(model: nn.Module, ctx: RunContext, cfg: QuantizeConfig, qat_cfg: QATConfig,
                  example: Batch) -> tuple[nn.Module, dict[str, Any]]:
    """Quantization-aware training (see qat.py), then the int8 QDQ graph in onnxruntime; parity with the fake-quant model."""
    calibration_feeds(ctx, cfg)  # the same clear error as post-training static int8 on an empty split
    loader = ctx.data.loader(cfg.calibration_split, shuffle=True, seed=ctx.seed)
    batches = [x for x, _ in itertools.islice(loader, cfg.calibration_batches)]
    result = qat.train_qat(model, ctx, qat_cfg, batches, example, cfg.opset)
    meta = {"mode": cfg.mode, "opset": cfg.opset, "backend": cfg.backend(), "qat": True}
    out = graph_module(result.onnx_bytes, cfg, meta)
    check = ctx.data.example_batch(32)
    parity = fidelity(result.model, out, check)
    details = {"onnx_bytes": len(result.onnx_bytes), "calibration_batches": len(batches),
               "qat": {"val_after_calibration": round(result.val_calibrated, 6), "val_after_training": round(result.val_trained, 6),
                       "loss": "distillation from the teacher" if ctx.teacher is not None else "cross-entropy on labels",
                       **result.fit, **result.export, "masks_kept": result.is_masks_kept,
                       "parity_vs_fake_quant": {k: round(v, 6) for k, v in parity.items()}}}
    return out, details


def _with_reduce_range(cfg: QuantizeConfig) -> QuantizeConfig:
    """``reduce_range: null`` resolved for onnxruntime/OpenVINO int8: 7-bit weights where this CPU's onnxruntime int8 GEMM
    saturates (asked of onnxruntime itself, :func:`~slimtorch.quantize.dynamic_qat.u8s8_saturates`), 8-bit elsewhere."""
    if cfg.reduce_range is not None or cfg.runtime == "torch" or cfg.mode not in ("dynamic_int8", "static_int8"):
        return cfg
    return cfg.model_copy(update={"reduce_range": dynamic_qat.u8s8_saturates()})


def _dynamic_qat_quantize(model: nn.Module, ctx: RunContext, cfg: QuantizeConfig, qat_cfg: QATConfig,
                          example: Batch) -> tuple[nn.Module, dict[str, Any]]:
    """Smoothing (if set), dynamic-int8-aware training of the float weights (dynamic_qat.py), then ordinary dynamic int8."""
    facts: dict[str, Any] = {}
    trained = copy.deepcopy(model)
    if cfg.smooth is not None:
        trained, facts["smoothing"] = _smoothed_copy(model, ctx, cfg, cfg.smooth)
    facts["dynamic_qat"] = dynamic_qat.train_dynamic_qat(trained, ctx, qat_cfg, reduce_range=bool(cfg.reduce_range))
    out, details = _ort_quantize(trained.to("cpu").eval(), ctx, cfg.model_copy(update={"smooth": None, "qat": None}), example)
    return out, {**facts, **details}


def _mixed_precision(fp32: bytes, ctx: RunContext, cfg: QuantizeConfig, excluded: list[str]) -> tuple[bytes, MixedPrecisionResult]:
    """Scan each layer's int8 cost on the val split; with ``max_drop``, keep the costliest in float (see sensitivity.py)."""
    feeds = calibration_feeds(ctx, cfg) if cfg.mode == "static_int8" else []

    def quantize(float_layers: list[str]) -> bytes:
        skip = excluded + float_layers
        if cfg.mode == "static_int8":
            return _ort.quantize_static(fp32, feeds, per_channel=cfg.per_channel, reduce_range=bool(cfg.reduce_range),
                                        calibrate_method=cfg.calibrate_method, nodes_to_exclude=skip)
        return _ort.quantize_dynamic(fp32, per_channel=cfg.per_channel, reduce_range=bool(cfg.reduce_range), nodes_to_exclude=skip)

    evaluate = sensitivity.Evaluator(fp32, ctx.data, "val", cfg.threads)
    result = sensitivity.mixed_precision(quantize, fp32, evaluate, max_drop=cfg.max_drop, max_float_fraction=cfg.max_float_fraction,
                                         time_batch=ctx.data.batch_size)
    return result.quantized, result


def mixed_precision_notes(scan: dict[str, Any]) -> list[str]:
    """Plain sentences for the report: which layers stayed float and what each bought, or why the budget failed."""
    if scan["max_drop"] is None:
        worst = max(scan["layers"], key=lambda c: c["metric_gain"], default=None)
        return [f"int8 sensitivity scan: all-int8 drop {scan['all_int8_drop']:+.4f} {scan['metric']}"
                + (f"; keeping {worst['layer']} float alone would change it by {-worst['metric_gain']:+.4f}" if worst else "")]
    steps = {s["layer"]: s for s in scan["steps"]}
    kept = [f"{f} (drop {steps[f]['drop']:.4f}, +{steps[f]['onnx_bytes'] - scan['all_int8_onnx_bytes']} B)" for f in scan["float_layers"]]
    if scan["is_met"] and not kept:
        return [f"max_drop {scan['max_drop']}: all layers int8 (val drop {scan['all_int8_drop']:.4f})."]
    if scan["is_met"]:
        return [f"max_drop {scan['max_drop']}: kept in float {', '.join(kept)}; all-int8 drop was {scan['all_int8_drop']:.4f}."]
    return [f"max_drop {scan['max_drop']} not met: all-int8 val drop {scan['all_int8_drop']:.4f}, best {scan['final_drop']:.4f} "
            f"with {len(scan['float_layers'])} of at most {scan['max_float_layers']} layers in float"
            + (f" ({', '.join(scan['float_layers'])})" if scan["float_layers"] else "")
            + (f"; tried keeping float {', '.join(scan['steps'][-1]['float_layers'])}" if scan["steps"] else "")
            + ". Raise max_float_fraction or max_drop, try calibrate_method: percentile, or use qat."]


def _ort_nodes_matching(onnx_bytes: bytes, patterns: list[str]) -> list[str]:
    if not patterns:
        return []
    import onnx

    names = [n.name for n in onnx.load_from_string(onnx_bytes).graph.node]
    return [n for n in names if any(p in n for p in patterns)]


def _torch_quantize(model: nn.Module, cfg: QuantizeConfig, ctx: RunContext) -> tuple[nn.Module, dict[str, Any]]:
    if cfg.mode == "bf16":
        return _torch.BFloat16Module(model), {"dtype": "bfloat16"}
    multiple = cfg.group_size if cfg.mode == "int4_weight_only" else 1
    chosen, skipped = _torch.select_linears(model, cfg.exclude, multiple)
    hint = f" (int4 needs in_features divisible by group_size={cfg.group_size}; skipped {skipped})" if skipped else ""
    _torch.require_linears(model, chosen, cfg.mode, hint)
    if cfg.mode == "dynamic_int8":
        timings = _torch.dynamic_int8_kernel_timings()  # the process's choice: a reloaded copy computes on the same kernel
        kernel = _torch.fastest_dynamic_int8_kernel(timings)
        _torch.dynamic_int8_(model, chosen, cfg.per_channel, kernel)
        return model, {"quantized_linears": len(chosen), "skipped_linears": skipped, "int8_kernel": kernel,
                       "int8_kernel_us": {k: round(v * 1e6, 1) for k, v in timings.items()}}
    bits = 4 if cfg.mode == "int4_weight_only" else 8
    ties = _torch.tied_linears(model)
    # A tied lm_head is the embedding table: quantized at embedding_bits when that differs from the mode's bits.
    table_linears = [fqn for fqn in ties.values() if cfg.embedding_bits not in (None, bits) and fqn in chosen]
    linears = [fqn for fqn in chosen if fqn not in table_linears]
    details: dict[str, Any] = {"quantized_linears": len(chosen), "skipped_linears": skipped}
    if cfg.method in ("gptq", "awq"):
        inputs = gptq.calibration_inputs(model, ctx.data, cfg.calibration_split, cfg.calibration_examples)
        if cfg.method == "gptq":
            errors = gptq.gptq_(model, linears, inputs, cfg.group_size, cfg.damping, act_order=cfg.act_order, mse=cfg.mse_grid)
        else:
            errors = awq.awq_(model, linears, inputs, cfg.group_size)
        details.update({"calibration_batches": len(inputs),
                        f"{cfg.method}_relative_output_error_mean": round(sum(errors.values()) / max(len(errors), 1), 6)})
    else:
        _torch.weight_only_(model, linears, bits, cfg.group_size)
    if cfg.embedding_bits is not None:
        embeddings, float_tables = _torch.quantize_embeddings_(model, cfg.embedding_bits, cfg.group_size, ties, cfg.exclude)
        details.update(embedding_bits=cfg.embedding_bits, quantized_embeddings=embeddings, float_embeddings=float_tables,
                       tied_tables={e: ties[e] for e in embeddings if e in ties and _is_shared_table(model, e)})
    activations: str = cfg.int8_activations
    if activations == "auto":
        activations, details["int8_activations_us"] = _faster_int8_activations(model)
        details["int8_activations"] = activations
    if activations != "bf16":
        details["int8_activation_linears"] = _torch.int8_activations_(model, activations)
    details["kernel_check"] = _weight_only_kernel_check(model)
    return model, details


def _faster_int8_activations(model: nn.Module) -> tuple[str, dict[str, float]]:
    """``int8_activations: auto``: bf16 or int8x2 (both ~16-bit) for the int8 weight-only layers, timed on the largest here.

    int8x2 is kept only when more than 10 % faster: without native bf16 (AVX2-only CPUs) torch emulates it, and fbgemm's
    int8 GEMM is the fast kernel there; on CPUs with AVX512-BF16 one bf16 pass beats two int8 passes.
    """
    layers = [m for m in model.modules() if isinstance(m, _torch.WeightOnlyLinear) and m.bits == 8]
    if not layers:
        return "bf16", {}
    largest = max(layers, key=lambda m: m.in_features * m.out_features)
    probe_layer = copy.deepcopy(largest)
    us = {}
    for activations in ("bf16", "int8x2"):
        probe_layer.activations = activations
        us[activations] = kernels.weight_only_speed(probe_layer)["weight_only_us"]
    return ("int8x2" if us["int8x2"] < 0.9 * us["bf16"] else "bf16"), us


def _weight_only_kernel_check(model: nn.Module) -> dict[str, Any] | None:
    """The largest weight-only layer timed at batch 1 against fp32 on this CPU: whether the packed kernel pays off here."""
    layers = [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, _torch.WeightOnlyLinear)]
    if not layers:
        return None
    fqn, layer = max(layers, key=lambda item: item[1].in_features * item[1].out_features)
    return {"layer": fqn, "bits": layer.bits, "activations": layer.activations, "rows": 1, **kernels.weight_only_speed(layer),
            "machine": probe().summary()}


def kernel_check_note(check: dict[str, Any]) -> str | None:
    """A warning when the weight-only kernel is slower than fp32 on this machine, and what to use instead."""
    if check["speedup"] >= 1.0:
        return None
    return (f"WARNING: int{check['bits']} weight-only ({check['activations']} activations) runs {check['layer']} at "
            f"{check['speedup']:.2f}x the speed of fp32 at batch 1 on this machine ({check['machine']}): no fast kernel for it "
            "here. Smaller, not faster; for speed use mode: dynamic_int8 (runtime: auto times fbgemm and onnxruntime int8), "
            "or int8_weight_only with int8_activations: int8, and check `slimtorch doctor`.")


def _is_shared_table(model: nn.Module, embedding: str) -> bool:
    module = model.get_submodule(embedding)
    return isinstance(module, _torch.WeightOnlyEmbedding) and module.tied_to is not None


def embedding_note(details: dict[str, Any], cfg: QuantizeConfig) -> str:
    """One sentence on the embedding tables: their precision, which Linear shares each, which stayed float."""
    grid = "int8 per row" if cfg.embedding_bits == 8 else f"int4 per {cfg.group_size} columns"
    shared = "; ".join(f"{lin} runs on {emb}'s table" for emb, lin in details["tied_tables"].items())
    kept = f"; kept in float: {', '.join(details['float_embeddings'])}" if details["float_embeddings"] else ""
    return f"embedding tables {', '.join(details['quantized_embeddings'])}: {grid}, dequantized on lookup" + (f" ({shared})" if shared else "") + kept


@torch.no_grad()
def fidelity(reference: nn.Module, candidate: nn.Module, example: Batch) -> dict[str, float]:
    """How close the quantized outputs are to the float ones on one test batch."""
    ref, got = forward(reference, example).float().cpu(), forward(candidate, example).float().cpu()
    return {"output_max_abs_diff": (got - ref).abs().max().item(),
            "output_cosine": F.cosine_similarity(got.flatten(1), ref.flatten(1), dim=-1).mean().item(),
            "argmax_agreement": (got.argmax(-1) == ref.argmax(-1)).float().mean().item()}


class QuantizeStage(Stage[QuantizeConfig], kind="quantize"):
    """Quantize with onnxruntime (dynamic/static int8, fp16) or torch (dynamic int8, weight-only int8/int4, bf16).

    Pruning masks are baked into a copy first; the input model is not modified.
    """

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        cfg = self.config
        if cfg.runtime == "auto":
            return _fastest_runtime(cfg, model, ctx)
        _openvino.require_extras(cfg.runtime, cfg.quantizer)
        cfg = _with_reduce_range(cfg)
        # Quantized artifacts run on CPU kernels (onnxruntime, OpenVINO, torch's packed int8/int4): built from the CPU.
        reference = plain_copy(model).to("cpu")
        ctx = dataclasses.replace(ctx, data=with_model_tokens(ctx.data, model))  # a causal LM reads its own tokens
        example = ctx.data.example_batch(4)
        if cfg.qat is not None and cfg.mode == "dynamic_int8":
            out, details = _dynamic_qat_quantize(reference, ctx, cfg, cfg.qat, example)
        elif cfg.qat is not None:
            out, details = _qat_quantize(model, ctx, cfg, cfg.qat, example)
            reference = plain_copy(model).to("cpu")
        elif cfg.runtime in ("onnxruntime", "openvino"):
            out, details = _ort_quantize(reference, ctx, cfg, example)
        else:
            out, details = _torch_quantize(plain_copy(model).to("cpu"), cfg, ctx)
            set_attrs_(out, slimtorch_format="torch_quantized", slimtorch_quantization=cfg.model_dump())
        set_attrs_(out, slimtorch_spec=getattr(model, "slimtorch_spec", None))
        out.eval()
        check = ctx.data.example_batch(32)
        details = {"backend": cfg.backend(), "inputs": input_names_of(example), **details, **fidelity(reference, out, check)}
        if cfg.reduce_range is not None and cfg.runtime != "torch" and cfg.mode in ("dynamic_int8", "static_int8"):
            details["reduce_range"] = cfg.reduce_range
        record = self.record(details=details)
        if self.config.reduce_range is None and cfg.reduce_range:
            record.notes.append("7-bit int8 weights (reduce_range): onnxruntime's int8 GEMM on this CPU (no VNNI) sums uint8 x int8 "
                                "pairs in saturating int16, which 8-bit weights overflow; set quantize.reduce_range to choose.")
        if cfg.mode == "dynamic_int8" and cfg.runtime == "onnxruntime" and cfg.embedding_bits == 4:
            record.notes.append(f"word-embedding tables were block-quantized to 4 bit (block {cfg.embedding_block_size}); "
                                "the MatMul weights are int8.")
        if "qat" in details:
            q = details["qat"]
            record.notes.append(f"QAT ({q['loss']}, {q.get('epochs_run', 0)} epochs): val {q['val_after_calibration']:.4f} after "
                                f"calibration -> {q['val_after_training']:.4f}; int8 graph vs fake-quant model: max |diff| "
                                f"{q['parity_vs_fake_quant']['output_max_abs_diff']:.3g}, argmax agreement "
                                f"{q['parity_vs_fake_quant']['argmax_agreement']:.3f}"
                                + ("; pruned zeros kept" if q["masks_kept"] else "; WARNING: pruned zeros were not all kept"))
        if "dynamic_qat" in details:
            q = details["dynamic_qat"]
            record.notes.append(f"dynamic-int8-aware training ({q['loss']}, {q['steps']} steps, {q['fake_quant_linears']} Linears): val "
                                f"{q['val_after_calibration']:.4f} with int8 arithmetic before -> {q['val_after_training']:.4f} after")
        if "smoothing" in details:
            sm = details["smoothing"]
            record.notes.append(f"SmoothQuant α {sm['alpha']}: {sm['linears']} Linears on {sm['inputs']} inputs; the largest input "
                                f"channel's range over the median channel's went from {sm['outlier_ratio_before_max']} to "
                                f"{sm['outlier_ratio_after_max']}")
        record.notes.extend(details.get("int8_notes", []))  # before max_drop's notes, which say why layers stayed float
        if "quant_sensitivity" in details:
            record.notes.extend(mixed_precision_notes(details["quant_sensitivity"]))
        if isinstance(out, OpenVINOModule):
            record.details["openvino"] = facts = out.runtime_facts()
            if cfg.mode == "static_int8" and facts["int8_weight_layers"] < facts["weight_layers"]:
                record.notes.append(f"OpenVINO runs {facts['int8_weight_layers']} of {facts['weight_layers']} Conv/MatMul layers "
                                    "in int8; the others stay float.")
        if details.get("kernel_check") and (note := kernel_check_note(details["kernel_check"])):
            record.notes.append(note)
        if details.get("skipped_linears"):
            record.notes.append(f"kept in float: {', '.join(details['skipped_linears'][:8])}")
        if details.get("quantized_embeddings"):
            record.notes.append(embedding_note(details, cfg))
        return out, record


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
    evaluate = ctx.extras.get("evaluate") or EvaluateConfig()
    lat = evaluate.latency
    sizes = lat.sizes_for(causal_lm_of(model) is not None)
    built, refused = [], {}
    for runtime in cfg.candidate_runtimes():
        try:
            built.append((runtime, *QuantizeStage(cfg.model_copy(update={"runtime": runtime})).apply(model, ctx)))
        except UnsupportedModuleError as exc:  # e.g. torch int8 on a model without nn.Linear: the other runtimes still compete
            refused[runtime] = str(exc)
    if not built:
        raise UnsupportedModuleError(f"quantize mode {cfg.mode!r}: no runtime could build it for this model: "
                                     + " | ".join(f"{r}: {why}" for r, why in refused.items()))
    data = with_model_tokens(ctx.data, model)
    inputs = {str(b): data.example_batch(b) for b in sizes}
    float_model = plain_copy(model).to("cpu").eval()
    timings = time_interleaved([(float_model, inputs), *[(out, inputs) for _, out, _ in built]], warmup=5, repeats=15,
                               threads=lat.threads, rounds=3, max_seconds=min(lat.max_seconds or 4.0, 4.0))
    float_ms, timed = timings[0], timings[1:]
    metric = "argmax_agreement" if ctx.task == "classification" else "output_cosine"

    def log_time(i: int) -> float:  # the geometric mean over batch sizes: each batch size counts the same
        return sum(math.log(max(timed[i][b]["p50"], 1e-9)) for b in inputs)

    fidelities = [record.details[metric] for _, _, record in built]
    win, faithful = fastest_faithful(fidelities, [log_time(i) for i in range(len(built))], AUTO_FIDELITY_TOLERANCE[metric])
    rows = []
    for i, (runtime, _, record) in enumerate(built):
        why = ("fastest" + (" of the faithful ones" if len(faithful) < len(built) else "")) if i == win else (
            f"{metric} {record.details[metric]:.4f} is more than {AUTO_FIDELITY_TOLERANCE[metric]} below the best"
            if i not in faithful else f"{math.exp((log_time(i) - log_time(win)) / len(inputs)):.2f}x slower")
        rows.append({"runtime": runtime, "backend": record.details["backend"], metric: round(record.details[metric], 6),
                     "p50_ms": {b: timed[i][b]["p50"] for b in inputs},
                     "speedup_vs_float": {b: round(float_ms[b]["p50"] / timed[i][b]["p50"], 3) for b in inputs},
                     "chosen": i == win, "why": why})
    rows += [{"runtime": r, "chosen": False, "why": f"cannot build it: {why}"} for r, why in refused.items()]
    runtime, out, record = built[win]
    record.details["runtime_auto"] = {"candidates": rows, "timed_on": probe().summary(), "threads": lat.threads,
                                      "float_p50_ms": {b: float_ms[b]["p50"] for b in inputs}}
    speed = ", ".join(f"b{b} {rows[win]['speedup_vs_float'][b]:.2f}x" for b in inputs)
    others = "; ".join(f"{r['runtime']}: {r['why'][:200]}" for r in rows if not r["chosen"])
    record.notes.insert(0, f"runtime: auto chose {runtime} ({speed} the float model's speed, timed side by side on "
                           f"{probe().summary()})" + (f"; {others}" if others else ""))
    if all(rows[win]["speedup_vs_float"][b] < 1 for b in inputs):
        record.notes.insert(1, f"WARNING: no runtime runs {cfg.mode} faster than the float model on this machine "
                               f"({probe().summary()}); the quantized model is smaller, not faster. `slimtorch doctor` "
                               "times each kernel family here.")
    return out, record

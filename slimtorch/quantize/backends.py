"""The quantize backends: one function per runtime and mode, looked up in :data:`BACKENDS` by :func:`backend_key`.

Each backend takes the :class:`Source` (the caller's model, a CPU copy and an example batch), the run context and
its :class:`~slimtorch.quantize.config.QuantizeConfig`, and returns a :class:`Quantized`: the model, its typed
details (``details.py``) and its report notes. It records nothing itself; the stage builds the record.

Example:
    >>> backend_key(QuantizeConfig(mode="int8_weight_only", runtime="torch"))
    'torch:int8_weight_only'
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from slimtorch.core import Batch, RunContext, forward
from slimtorch.errors import NotCalibratedError
from slimtorch.export.onnx import plain_copy
from slimtorch.measure.machine import probe
from slimtorch.models.attrs import set_attrs_
from slimtorch.quantize import _openvino, _ort, _torch, awq, dynamic_qat, gptq, kernels, qat, sensitivity, smooth
from slimtorch.quantize._ort_transformer import encoder_onnx
from slimtorch.quantize.config import QATConfig, QuantizeConfig
from slimtorch.quantize.details import (
    ActivationsChoice,
    BackendDetails,
    BFloat16Details,
    CalibratedRounding,
    Calibration,
    DynamicQATDetails,
    EmbeddingTables,
    Fidelity,
    KernelCheck,
    OnnxDetails,
    QATDetails,
    QATFacts,
    TorchDynamicInt8Details,
    WeightOnlyDetails,
)
from slimtorch.quantize.sensitivity import MixedPrecisionResult
from slimtorch.registry import Registry
from slimtorch.runtime import OpenVINOModule, OrtModule


@dataclass(frozen=True)
class Source:
    """What every backend starts from. Backends copy before changing anything: neither model is modified."""

    model: nn.Module  # the stage's input model, on its own device
    float_cpu: nn.Module  # plain_copy(model) on the CPU (masks baked, eval mode); also the float reference of the fidelity check
    example: Batch  # 4 examples: what the ONNX export traces


@dataclass
class Quantized:
    """A backend's result: the quantized model, what it did, and the report's sentences about it."""

    model: nn.Module
    details: BackendDetails
    notes: list[str]


Backend = Callable[[Source, RunContext, QuantizeConfig], Quantized]
# "runtime:mode", with "+qat" when quantize.qat trains first -> the backend that builds it
BACKENDS: Registry[Backend] = Registry("quantize backend")


def backend_key(cfg: QuantizeConfig) -> str:
    """The :data:`BACKENDS` name of ``cfg``: ``runtime:mode``, plus ``+qat`` when it trains first (runtime resolved, not auto)."""
    return f"{cfg.runtime}:{cfg.mode}" + ("+qat" if cfg.qat is not None else "")


@torch.no_grad()
def fidelity(reference: nn.Module, candidate: nn.Module, example: Batch) -> Fidelity:
    """How close the quantized outputs are to the float ones on one test batch."""
    ref, got = forward(reference, example).float().cpu(), forward(candidate, example).float().cpu()
    return Fidelity(output_max_abs_diff=(got - ref).abs().max().item(),
                    output_cosine=F.cosine_similarity(got.flatten(1), ref.flatten(1), dim=-1).mean().item(),
                    argmax_agreement=(got.argmax(-1) == ref.argmax(-1)).float().mean().item())


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


def graph_module(onnx_bytes: bytes, cfg: QuantizeConfig, meta: dict[str, Any]) -> nn.Module:
    """The ONNX graph in the runtime ``cfg.runtime`` names: an :class:`OrtModule` or an :class:`OpenVINOModule`."""
    if cfg.runtime == "openvino":
        return OpenVINOModule(onnx_bytes, threads=cfg.threads, meta=meta)
    return OrtModule(onnx_bytes, threads=cfg.threads, meta=meta)


def _qat_config(cfg: QuantizeConfig) -> QATConfig:
    if cfg.qat is None:
        raise ValueError(f"quantize backend {backend_key(cfg)!r} trains with quantize.qat; got a config without qat.")
    return cfg.qat


# --- onnxruntime and OpenVINO: the exported ONNX graph ---

def _smoothed_copy(model: nn.Module, ctx: RunContext, cfg: QuantizeConfig, alpha: float) -> tuple[nn.Module, smooth.SmoothingResult]:
    """A copy of ``model`` whose Linear inputs are smoothed (SmoothQuant) on ``cfg.calibration_batches`` of its split."""
    smoothed = copy.deepcopy(model).eval()
    loader = ctx.data.loader(cfg.calibration_split, shuffle=True, seed=ctx.seed)
    return smoothed, smooth.smooth_(smoothed, (x for x, _ in itertools.islice(loader, cfg.calibration_batches)), alpha)


def _ort_nodes_matching(onnx_bytes: bytes, patterns: list[str]) -> list[str]:
    if not patterns:
        return []
    import onnx

    names = [n.name for n in onnx.load_from_string(onnx_bytes).graph.node]
    return [n for n in names if any(p in n for p in patterns)]


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


def _onnx_quantize(model: nn.Module, ctx: RunContext, cfg: QuantizeConfig, example: Batch) -> tuple[nn.Module, OnnxDetails]:
    """Export ``model`` (not modified) to ONNX and quantize the graph post-training as ``cfg.mode`` says."""
    smoothing = None
    if cfg.smooth is not None:
        model, smoothing = _smoothed_copy(model, ctx, cfg, cfg.smooth)
    fp32, export_facts = encoder_onnx(model, example, cfg.opset, cfg.attention)
    excluded = _ort_nodes_matching(fp32, cfg.exclude)
    embedding_4bit_nodes, calibration = None, None
    if cfg.mode == "dynamic_int8":
        graph = fp32
        if cfg.embedding_bits == 4:
            graph, embedding_4bit_nodes = _ort.block_quantize_embeddings(fp32, cfg.embedding_block_size)
        quantized = _ort.quantize_dynamic(graph, per_channel=cfg.per_channel, reduce_range=bool(cfg.reduce_range),
                                          nodes_to_exclude=excluded)
    elif cfg.mode == "static_int8":
        feeds = calibration_feeds(ctx, cfg)
        if cfg.quantizer == "nncf":
            quantized = _openvino.nncf_quantize(fp32, feeds, nodes_to_exclude=excluded)
        else:
            quantized = _ort.quantize_static(fp32, feeds, per_channel=cfg.per_channel, reduce_range=bool(cfg.reduce_range),
                                             calibrate_method=cfg.calibrate_method, nodes_to_exclude=excluded)
        calibration = Calibration(examples=int(sum(len(next(iter(f.values()))) for f in feeds)), batches=len(feeds))
    elif cfg.mode == "fp16":
        quantized = _ort.convert_fp16(fp32)
    else:  # fp32 on OpenVINO: the exported graph as it is
        quantized = fp32
    mixed = None
    if cfg.max_drop is not None or cfg.sensitivity:
        quantized, mixed = _mixed_precision(fp32, ctx, cfg, excluded)
        excluded = excluded + mixed.float_layers
    # most weights left float, nodes kept float for -inf ranges: said in the report
    int8_notes = _ort.int8_notes(quantized, cfg.mode.replace("_", " ")) if cfg.mode in ("dynamic_int8", "static_int8") else None
    details = OnnxDetails(onnx_fp32_bytes=len(fp32), onnx_bytes=len(quantized), excluded_nodes=excluded, smoothing=smoothing,
                          export=export_facts, embedding_4bit_nodes=embedding_4bit_nodes, calibration=calibration,
                          sensitivity=mixed, int8_notes=int8_notes)
    meta = {"mode": cfg.mode, "opset": cfg.opset, "backend": cfg.backend()}
    return graph_module(quantized, cfg, meta), details


def _embedding_4bit_notes(cfg: QuantizeConfig) -> list[str]:
    if cfg.mode == "dynamic_int8" and cfg.runtime == "onnxruntime" and cfg.embedding_bits == 4:
        return [f"word-embedding tables were block-quantized to 4 bit (block {cfg.embedding_block_size}); the MatMul weights are int8."]
    return []


@BACKENDS.register("onnxruntime:dynamic_int8")
@BACKENDS.register("onnxruntime:static_int8")
@BACKENDS.register("onnxruntime:fp16")
@BACKENDS.register("openvino:static_int8")
@BACKENDS.register("openvino:fp32")
def onnx_backend(source: Source, ctx: RunContext, cfg: QuantizeConfig) -> Quantized:
    """Post-training: the float model exported to ONNX, quantized by onnxruntime (or NNCF), run by onnxruntime or OpenVINO."""
    out, details = _onnx_quantize(source.float_cpu, ctx, cfg, source.example)
    return Quantized(out, details, _embedding_4bit_notes(cfg) + details.notes())


@BACKENDS.register("onnxruntime:dynamic_int8+qat")
def dynamic_qat_backend(source: Source, ctx: RunContext, cfg: QuantizeConfig) -> Quantized:
    """Smoothing (if set), dynamic-int8-aware training of the float weights (dynamic_qat.py), then ordinary dynamic int8."""
    trained, smoothing = copy.deepcopy(source.float_cpu), None
    if cfg.smooth is not None:
        trained, smoothing = _smoothed_copy(source.float_cpu, ctx, cfg, cfg.smooth)
    training = dynamic_qat.train_dynamic_qat(trained, ctx, _qat_config(cfg), reduce_range=bool(cfg.reduce_range))
    out, onnx = _onnx_quantize(trained.to("cpu").eval(), ctx, cfg.model_copy(update={"smooth": None, "qat": None}), source.example)
    details = DynamicQATDetails(training=training, onnx=onnx, smoothing=smoothing)
    return Quantized(out, details, _embedding_4bit_notes(cfg) + details.notes())


@BACKENDS.register("onnxruntime:static_int8+qat")
@BACKENDS.register("openvino:static_int8+qat")
def qat_backend(source: Source, ctx: RunContext, cfg: QuantizeConfig) -> Quantized:
    """Quantization-aware training (see qat.py), then the int8 QDQ graph; parity with the fake-quant model."""
    calibration_feeds(ctx, cfg)  # the same clear error as post-training static int8 on an empty split
    loader = ctx.data.loader(cfg.calibration_split, shuffle=True, seed=ctx.seed)
    batches = [x for x, _ in itertools.islice(loader, cfg.calibration_batches)]
    result = qat.train_qat(source.model, ctx, _qat_config(cfg), batches, source.example, cfg.opset)
    meta = {"mode": cfg.mode, "opset": cfg.opset, "backend": cfg.backend(), "qat": True}
    out = graph_module(result.onnx_bytes, cfg, meta)
    parity = fidelity(result.model, out, ctx.data.example_batch(32))
    facts = QATFacts(val_after_calibration=result.val_calibrated, val_after_training=result.val_trained,
                     loss="distillation from the teacher" if ctx.teacher is not None else "cross-entropy on labels",
                     fit=result.fit, export=result.export, is_masks_kept=result.is_masks_kept, parity=parity)
    details = QATDetails(onnx_bytes=len(result.onnx_bytes), calibration_batches=len(batches), qat=facts)
    return Quantized(out, details, details.notes())


# --- torch: packed kernels on the CPU ---

def _torch_artifact(out: nn.Module, cfg: QuantizeConfig) -> nn.Module:
    """Mark ``out`` as a torch_quantized artifact holding its config (what formats.py reloads it from)."""
    return set_attrs_(out, slimtorch_format="torch_quantized", slimtorch_quantization=cfg.model_dump())


def _chosen_linears(model: nn.Module, cfg: QuantizeConfig) -> tuple[list[str], list[str]]:
    """The Linears to quantize and those skipped (int4: in_features not a multiple of group_size).

    Raises:
        UnsupportedModuleError: none to quantize.
    """
    multiple = cfg.group_size if cfg.mode == "int4_weight_only" else 1
    chosen, skipped = _torch.select_linears(model, cfg.exclude, multiple)
    hint = f" (int4 needs in_features divisible by group_size={cfg.group_size}; skipped {skipped})" if skipped else ""
    _torch.require_linears(model, chosen, cfg.mode, hint)
    return chosen, skipped


@BACKENDS.register("torch:bf16")
def bf16_backend(source: Source, ctx: RunContext, cfg: QuantizeConfig) -> Quantized:
    """torch bfloat16: a bf16 copy of the model."""
    return Quantized(_torch_artifact(_torch.BFloat16Module(plain_copy(source.model).to("cpu")), cfg), BFloat16Details(), [])


@BACKENDS.register("torch:dynamic_int8")
def torch_dynamic_int8_backend(source: Source, ctx: RunContext, cfg: QuantizeConfig) -> Quantized:
    """torch dynamic int8 on fbgemm or ``aten._int_mm``, whichever this process timed faster."""
    model = plain_copy(source.model).to("cpu")
    chosen, skipped = _chosen_linears(model, cfg)
    timings = _torch.dynamic_int8_kernel_timings()  # the process's choice: a reloaded copy computes on the same kernel
    kernel = _torch.fastest_dynamic_int8_kernel(timings)
    _torch.dynamic_int8_(model, chosen, cfg.per_channel, kernel)
    details = TorchDynamicInt8Details(quantized_linears=len(chosen), skipped_linears=skipped, int8_kernel=kernel, kernel_seconds=timings)
    return Quantized(_torch_artifact(model, cfg), details, details.notes())


def _faster_int8_activations(model: nn.Module) -> ActivationsChoice:
    """``int8_activations: auto``: bf16 or int8x2 (both ~16-bit) for the int8 weight-only layers, timed on the largest here.

    int8x2 is kept only when more than 10 % faster: without native bf16 (AVX2-only CPUs) torch emulates it, and fbgemm's
    int8 GEMM is the fast kernel there; on CPUs with AVX512-BF16 one bf16 pass beats two int8 passes.
    """
    layers = [m for m in model.modules() if isinstance(m, _torch.WeightOnlyLinear) and m.bits == 8]
    if not layers:
        return ActivationsChoice("bf16", {})
    largest = max(layers, key=lambda m: m.in_features * m.out_features)
    probe_layer = copy.deepcopy(largest)
    us = {}
    for activations in ("bf16", "int8x2"):
        probe_layer.activations = activations
        us[activations] = kernels.weight_only_speed(probe_layer)["weight_only_us"]
    return ActivationsChoice("int8x2" if us["int8x2"] < 0.9 * us["bf16"] else "bf16", us)


def _weight_only_kernel_check(model: nn.Module) -> KernelCheck | None:
    """The largest weight-only layer timed at batch 1 against fp32 on this CPU: whether the packed kernel pays off here."""
    layers = [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, _torch.WeightOnlyLinear)]
    if not layers:
        return None
    fqn, layer = max(layers, key=lambda item: item[1].in_features * item[1].out_features)
    return KernelCheck.from_json({"layer": fqn, "bits": layer.bits, "activations": layer.activations, "rows": 1,
                                  **kernels.weight_only_speed(layer), "machine": probe().summary()})


def _is_shared_table(model: nn.Module, embedding: str) -> bool:
    module = model.get_submodule(embedding)
    return isinstance(module, _torch.WeightOnlyEmbedding) and module.tied_to is not None


def _calibrated_rounding_(model: nn.Module, ctx: RunContext, cfg: QuantizeConfig, linears: list[str]) -> CalibratedRounding:
    """GPTQ or AWQ on ``linears`` (in place), calibrated on ``cfg.calibration_examples`` of its split."""
    inputs = gptq.calibration_inputs(model, ctx.data, cfg.calibration_split, cfg.calibration_examples)
    if cfg.method == "gptq":
        errors = gptq.gptq_(model, linears, inputs, cfg.group_size, cfg.damping, act_order=cfg.act_order, mse=cfg.mse_grid)
    else:
        errors = awq.awq_(model, linears, inputs, cfg.group_size)
    return CalibratedRounding(method=cfg.method, batches=len(inputs), errors=errors)


@BACKENDS.register("torch:int8_weight_only")
@BACKENDS.register("torch:int4_weight_only")
def weight_only_backend(source: Source, ctx: RunContext, cfg: QuantizeConfig) -> Quantized:
    """torch weight-only int8/int4 (round-to-nearest, GPTQ or AWQ), embedding tables at ``embedding_bits``."""
    model = plain_copy(source.model).to("cpu")
    chosen, skipped = _chosen_linears(model, cfg)
    bits = 4 if cfg.mode == "int4_weight_only" else 8
    ties = _torch.tied_linears(model)
    # A tied lm_head is the embedding table: quantized at embedding_bits when that differs from the mode's bits.
    table_linears = [fqn for fqn in ties.values() if cfg.embedding_bits not in (None, bits) and fqn in chosen]
    linears = [fqn for fqn in chosen if fqn not in table_linears]
    calibrated = None
    if cfg.method in ("gptq", "awq"):
        calibrated = _calibrated_rounding_(model, ctx, cfg, linears)
    else:
        _torch.weight_only_(model, linears, bits, cfg.group_size)
    embeddings = None
    if cfg.embedding_bits is not None:
        tables, float_tables = _torch.quantize_embeddings_(model, cfg.embedding_bits, cfg.group_size, ties, cfg.exclude)
        embeddings = EmbeddingTables(bits=cfg.embedding_bits, quantized=tables, float_tables=float_tables,
                                     tied={e: ties[e] for e in tables if e in ties and _is_shared_table(model, e)})
    choice = _faster_int8_activations(model) if cfg.int8_activations == "auto" else None
    activations = choice.activations if choice is not None else cfg.int8_activations
    details = WeightOnlyDetails(quantized_linears=len(chosen), skipped_linears=skipped, group_size=cfg.group_size,
                                calibrated=calibrated, embeddings=embeddings, activations_choice=choice,
                                int8_activation_linears=_torch.int8_activations_(model, activations) if activations != "bf16" else None,
                                kernel_check=_weight_only_kernel_check(model))
    return Quantized(_torch_artifact(model, cfg), details, details.notes())

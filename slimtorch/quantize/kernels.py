"""Which quantized kernels are fast on *this* machine: each kernel family timed on one Linear layer.

The same int8 or int4 format is fast on one CPU and slower than fp32 on another: ``aten._int_mm`` is a VNNI
kernel on some and a reference loop on AVX2-only CPUs; torch's int4 weight-only kernel needs native bf16 to
beat fp32; onnxruntime's int8 gains less without VNNI. :func:`kernel_table` times every family side by side
at two representative shapes (one decode row, and a 1024-row batch: 8 sequences × 128 tokens) so a user
sees before compressing what will pay off here (``slimtorch doctor``).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimtorch.errors import MissingExtraError
from slimtorch.measure.latency import median_call_seconds
from slimtorch.measure.machine import probe
from slimtorch.quantize import _torch

# (label, rows, in_features, out_features): a decode step of a small LM, and a MiniLM-sized FFN batch.
SHAPES = (("1 row, 768→3072", 1, 768, 3072), ("1024 rows, 384→1536", 1024, 384, 1536))


@dataclass(frozen=True)
class KernelTiming:
    """One kernel family at one shape: median microseconds per call and its speed against torch fp32."""

    kernel: str
    runtime: str
    shape: str
    us: float | None
    speedup_vs_fp32: float | None
    note: str = ""


def _torch_candidates(linear: nn.Linear, x: Tensor) -> dict[str, tuple[str, Callable[[], Any]]]:
    """``{name: (runtime, call)}`` for torch's kernels on ``linear``."""
    out: dict[str, tuple[str, Callable[[], Any]]] = {"fp32": ("torch", lambda: F.linear(x, linear.weight, linear.bias))}
    w16, b16, x16 = linear.weight.bfloat16(), linear.bias.bfloat16(), x.bfloat16()
    out["bf16" + ("" if probe().bf16 else " (emulated)")] = ("torch", lambda: F.linear(x16, w16, b16))
    for kernel in _torch.DYNAMIC_INT8_KERNELS:
        layer = _torch.DynamicInt8Linear.from_linear(linear)
        layer.kernel = kernel
        out[f"dynamic int8 ({'fbgemm' if kernel == 'fbgemm' else 'aten._int_mm'})"] = ("torch", functools.partial(layer, x))
    int8 = _torch.WeightOnlyLinear.from_linear(linear, 8)
    out["int8 weight-only, bf16 activations"] = ("torch", lambda: int8(x))
    int8_acts = _torch.WeightOnlyLinear.from_linear(linear, 8)
    int8_acts.activations = "int8"
    out["int8 weight-only, int8 activations (fbgemm)"] = ("torch", lambda: int8_acts(x))
    int4 = _torch.WeightOnlyLinear.from_linear(linear, 4, 32)
    out["int4 weight-only (g32), bf16 activations"] = ("torch", lambda: int4(x))
    packed, scales_zeros = int4._int4_kernel_args()
    out["int4 weight-only (g32), fp32 activations"] = (
        "torch", lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, scales_zeros.float()))
    return out


def _onnx_candidates(linear: nn.Linear, x: Tensor) -> dict[str, tuple[str, Callable[[], Any]]]:
    from slimtorch.quantize import _ort
    from slimtorch.runtime import OpenVINOModule, OrtModule

    buf = io.BytesIO()
    torch.onnx.export(nn.Sequential(linear).eval(), (x,), buf, dynamo=False, input_names=["x"],  # type: ignore[arg-type]
                      dynamic_axes={"x": {0: "rows"}}, opset_version=17)
    fp32 = buf.getvalue()
    ort_fp32, ort_int8 = OrtModule(fp32, threads=1), OrtModule(_ort.quantize_dynamic(fp32, per_channel=True), threads=1)
    out: dict[str, tuple[str, Callable[[], Any]]] = {"fp32 (onnxruntime)": ("onnxruntime", lambda: ort_fp32(x)),
                                                       "dynamic int8 (onnxruntime)": ("onnxruntime", lambda: ort_int8(x))}
    try:
        ov = OpenVINOModule(fp32, threads=1)
        ov(x)
        out["fp32 (OpenVINO)"] = ("openvino", lambda: ov(x))
    except MissingExtraError:
        pass
    return out


@torch.no_grad()
def kernel_table(threads: int = 1, budget_s: float = 0.3, shapes: tuple[tuple[str, int, int, int], ...] = SHAPES,
                 onnx: bool = True) -> list[KernelTiming]:
    """Time every kernel family at ``shapes`` on ``threads`` threads, torch fp32 first; ``budget_s`` per cell.

    A kernel that cannot run here (a torch build without fbgemm, OpenVINO not installed) is left out or
    its row says why.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows: list[KernelTiming] = []
    try:
        for label, m, k, n in shapes:
            gen = torch.Generator().manual_seed(0)
            linear = nn.Linear(k, n)
            x = torch.randn(m, k, generator=gen)
            candidates = _torch_candidates(linear, x)
            if onnx:
                candidates.update(_onnx_candidates(linear, x))
            fp32_us: float | None = None
            for name, (runtime, call) in candidates.items():
                try:
                    us = median_call_seconds(call, budget_s) * 1e6
                except (RuntimeError, NotImplementedError) as exc:
                    rows.append(KernelTiming(name, runtime, label, None, None, f"cannot run here: {str(exc).splitlines()[0][:80]}"))
                    continue
                fp32_us = us if name == "fp32" else fp32_us
                rows.append(KernelTiming(name, runtime, label, round(us, 1), round(fp32_us / us, 2) if fp32_us else None))
    finally:
        torch.set_num_threads(previous)
    return rows


def doctor(threads: int = 1, budget_s: float = 0.3, onnx: bool = True) -> dict[str, Any]:
    """This machine (:func:`~slimtorch.measure.machine.probe`) and its :func:`kernel_table`, as one JSON-ready dict.

    Example:
        >>> report = doctor(budget_s=0.05)  # doctest: +SKIP
        >>> report["machine"]["summary"]    # doctest: +SKIP
        'AMD EPYC, x86_64 AVX2 (no VNNI, no BF16), 2 cores'
    """
    return {"machine": probe().to_json(), "threads": threads,
            "kernels": [asdict(row) for row in kernel_table(threads, budget_s, onnx=onnx)]}


@torch.no_grad()
def weight_only_speed(layer: _torch.WeightOnlyLinear, rows: int = 1, threads: int = 1, budget_s: float = 0.2) -> dict[str, float]:
    """One weight-only layer at ``rows`` input rows against fp32 ``F.linear`` of its own dequantized weight, here.

    Returns ``{"weight_only_us", "fp32_us", "speedup"}``: below 1.0 the packed kernel is slower than plain fp32 on this
    CPU (torch's int4 kernel without native bf16, for one).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(rows, layer.in_features, generator=torch.Generator().manual_seed(0))
        weight = layer.dequantized_weight()
        bias = layer.bias
        fp32 = median_call_seconds(lambda: F.linear(x, weight, bias), budget_s) * 1e6
        packed = median_call_seconds(lambda: layer(x), budget_s) * 1e6
    finally:
        torch.set_num_threads(previous)
    return {"weight_only_us": round(packed, 1), "fp32_us": round(fp32, 1), "speedup": round(fp32 / packed, 3)}

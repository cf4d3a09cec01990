"""Torch-side quantization: dynamic int8, weight-only int8/int4 on torch's CPU kernels, bf16.

- ``dynamic_int8``: :class:`DynamicInt8Linear` (int8 weights, activations quantized per call, int32
  products on fbgemm's packed GEMM or ``aten._int_mm``, whichever this machine runs faster), the numerics
  of the deprecated ``torch.ao`` dynamic Linear it replaces.
- ``int8_weight_only`` / ``int4_weight_only``: :class:`WeightOnlyLinear` keeps int8 (per output
  channel) or grouped asymmetric int4 weights and multiplies with torch's packed CPU kernels
  ``aten._weight_int8pack_mm`` / ``aten._weight_int4pack_mm_for_cpu`` (the kernels torchao uses on CPU),
  with bf16 activations (their fast path; fp32 activations take a reference path ~30x slower).
- ``bf16``: :class:`BFloat16Module` holds the model in bfloat16 and casts float inputs/outputs.
"""

from __future__ import annotations

import fnmatch
import functools
import warnings
import weakref
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimtorch.errors import UnsupportedModuleError
from slimtorch.measure.latency import median_call_seconds
from slimtorch.measure.machine import probe

INT4_GROUP_SIZES = (32, 64, 128, 256)


def select_linears(model: nn.Module, exclude: Sequence[str] = (), multiple_of: int = 1) -> tuple[list[str], list[str]]:
    """Fully qualified names of the ``nn.Linear`` modules to quantize, and those skipped (by fqn pattern or shape)."""
    chosen, skipped = [], []
    for fqn, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        if _matches(fqn, exclude) or module.in_features % multiple_of:
            skipped.append(fqn)
        else:
            chosen.append(fqn)
    return chosen, skipped


def require_linears(model: nn.Module, chosen: list[str], mode: str, hint: str = "") -> None:
    if chosen:
        return
    kinds = sorted({type(m).__name__ for m in model.modules() if not list(m.children())})
    raise UnsupportedModuleError(
        f"quantize mode {mode!r} quantizes nn.Linear weights, and {type(model).__name__} has no Linear layer it can "
        f"quantize (its layers: {', '.join(kinds[:12])}).{hint} For convolutional models use runtime: onnxruntime "
        "with mode: static_int8 or dynamic_int8."
    )


def linear_at(model: nn.Module, fqn: str) -> nn.Linear:
    """The ``nn.Linear`` at ``fqn``, one that :func:`select_linears` chose."""
    module = model.get_submodule(fqn)
    assert isinstance(module, nn.Linear), f"{fqn} is a {type(module).__name__}; select_linears chooses nn.Linear only"
    return module


def bias_of(linear: nn.Linear) -> Tensor | None:
    """``linear.bias`` (a Parameter, or None for ``bias=False``; torch does not annotate it)."""
    return cast("Tensor | None", linear.bias)


def set_submodule(model: nn.Module, fqn: str, module: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


# --- dynamic int8 ----------------------------------------------------------------------------------

QINT8_EPS = torch.finfo(torch.float32).eps


def int8_weight_grid(weight: Tensor, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """Symmetric int8 codes (N, K) and scales (N,) of ``weight`` (N, K), as torch.ao's weight observers compute them.

    ``s = max(|min|, |max|) / 127.5`` per output channel (or over the tensor), codes ``round(w / s)``
    clamped to [-128, 127] (the per-channel/min-max symmetric observers of ``per_channel_dynamic_qconfig``
    and ``default_dynamic_qconfig``).
    """
    w = weight.detach().float()
    absmax = w.abs().amax(1) if per_channel else w.abs().amax().expand(w.shape[0])  # (N,)
    scale = torch.clamp(absmax / 127.5, min=QINT8_EPS)
    codes = torch.clamp(torch.round(w * (1.0 / scale)[:, None]), -128, 127).to(torch.int8)
    return codes, scale


def activation_qparams(x: Tensor) -> tuple[float, int]:
    """Per-call asymmetric 7-bit grid of ``x`` (``reduce_range``, [0, 127]), fbgemm's ``ChooseQuantizationParams``."""
    lo_t, hi_t = torch.aminmax(x)
    lo, hi = min(lo_t.item(), 0.0), max(hi_t.item(), 0.0)
    scale = float(torch.tensor((hi - lo) / 127.0, dtype=torch.float32))
    if scale == 0.0:
        scale = 0.1
    from_min, from_max = -lo / scale, 127 - hi / scale
    zero = from_min if abs(lo / scale) < 127 + abs(hi / scale) else from_max
    return scale, int(min(127, max(0, round(zero))))


class DynamicInt8Linear(nn.Module):
    """``y = s_x · s_w · (q_x @ q_W.T) + b``: int8 weights, activations quantized on every call, int32 accumulation.

    The numerics of ``torch.ao.nn.quantized.dynamic.Linear`` on fbgemm (which it replaces): weights
    symmetric int8 per output channel (or per tensor); activations asymmetric 7-bit per call
    (``reduce_range``) over the whole input; the int8 × int8 → int32 product on ``kernel``: fbgemm's packed
    GEMM (fast with or without VNNI) or ``aten._int_mm`` (``q_x − z_x`` lies in [-127, 127], an exact int8
    operand), whichever :func:`dynamic_int8_kernel` timed faster on this machine.

    Buffers: ``qweight`` (N, K) int8, ``scale`` (N,) float32, ``bias`` (N,) or None.
    """

    qweight: Tensor
    scale: Tensor
    bias: Tensor | None

    def __init__(self, in_features: int, out_features: int, has_bias: bool = True, per_channel: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.per_channel = in_features, out_features, per_channel
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if has_bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, per_channel: bool = True) -> DynamicInt8Linear:
        bias = bias_of(linear)
        out = cls(linear.in_features, linear.out_features, bias is not None, per_channel)
        codes, scale = int8_weight_grid(linear.weight, per_channel)
        out.qweight.copy_(codes)
        out.scale.copy_(scale)
        if bias is not None and out.bias is not None:  # out has a bias exactly when linear has one
            out.bias.copy_(bias.detach().float())
        return out

    def dequantized_weight(self) -> Tensor:
        """The float weight (N, K) the layer computes with."""
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()  # (M, K)
        if self.kernel == "fbgemm" and not x2.is_cuda:
            # torch.ao's numerics (7-bit activations) on fbgemm's packed GEMM, whatever this CPU's VNNI
            y = int8_dynamic_mm(x2, self.qweight, self.scale, 1, True)  # (M, N) float32
            y = y + self.bias if self.bias is not None else y
        else:
            y = self._int_mm_forward(x2)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)  # (..., N)

    def _int_mm_forward(self, x2: Tensor) -> Tensor:
        scale, zero = activation_qparams(x2)
        inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)
        q = torch.mul(x2, inv).round_().add_(zero).clamp_(0, 127).sub_(zero).to(torch.int8)  # (M, K) in [-127, 127]
        y = torch._int_mm(q, self.qweight.t()).float()  # (M, N) int32 -> float32
        if self.bias is not None:
            return torch.addcmul(self.bias, y, scale * self.scale, out=y)  # in place: one pass, no new buffer
        return y.mul_(scale * self.scale)

    @property
    def kernel(self) -> str:
        """``fbgemm`` or ``int_mm``: set by :func:`dynamic_int8_` from timing both here, else the faster of them on this machine."""
        chosen = self.__dict__.get("_kernel")
        if chosen is None:
            chosen = "fbgemm" if torch.compiler.is_compiling() else dynamic_int8_kernel()
            self.__dict__["_kernel"] = chosen
        return chosen

    @kernel.setter
    def kernel(self, value: str) -> None:
        if value not in DYNAMIC_INT8_KERNELS:
            raise ValueError(f"kernel must be one of {DYNAMIC_INT8_KERNELS}; got {value!r}.")
        self.__dict__["_kernel"] = value

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, per_channel={self.per_channel}"


def dynamic_int8_(model: nn.Module, fqns: list[str], per_channel: bool = True, kernel: str | None = None) -> nn.Module:
    """Replace the Linear layers named in ``fqns`` by :class:`DynamicInt8Linear`, in place.

    ``kernel`` (``fbgemm`` / ``int_mm``) fixes the int8 GEMM; None lets each layer use the faster on this machine.
    """
    for fqn in fqns:
        layer = DynamicInt8Linear.from_linear(linear_at(model, fqn), per_channel)
        if kernel is not None:
            layer.kernel = kernel
        set_submodule(model, fqn, layer)
    return model


def _int_mm_flop(a_shape: Sequence[int], b_shape: Sequence[int], *args: object, out_shape: object = None, **kwargs: object) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]  # FLOPs of (M, K) @ (K, N); MACs = FLOPs / 2


def _register_int_mm_flops() -> None:
    """Let torch's FlopCounterMode (the MAC counter) see ``aten._int_mm``, which it has no formula for."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    if torch.ops.aten._int_mm.default not in flop_registry and torch.ops.aten._int_mm not in flop_registry:
        register_flop_formula(torch.ops.aten._int_mm)(_int_mm_flop)


_register_int_mm_flops()


# --- int8 x int8 on fbgemm (dynamic activations) --------------------------------------------------

# fbgemm's prepacked int8 weights per int8 weight tensor: ``{(data_ptr, shape): (weakref to the codes, their
# version, packed)}``. The packed weights are an opaque object torch.compile cannot trace, so the matmul is a
# custom op that finds them here; the weak reference tells a live tensor from a freed one whose address was
# reused, and the version counter codes changed in place (``load_state_dict``).
_FBGEMM_PACKED: dict[tuple[int, tuple[int, ...]], tuple[weakref.ref[Tensor], int, object]] = {}


def has_vnni() -> bool:
    """Whether this CPU multiplies int8 with a dot-product instruction (VNNI, AMX; see :mod:`slimtorch.measure.machine`)."""
    return probe().int8_dot


def fbgemm_saturates() -> bool:
    """Whether fbgemm's dynamic int8 GEMM adds uint8 × int8 pairs in saturating int16 here (its AVX2 path, no VNNI).

    Asked of fbgemm itself — four activations of code 255 against weights of 127: 4 · 255 · 127 exactly, or two pairs
    clipped to 32767 — because /proc/cpuinfo can disagree with what the kernel sees (VMs that hide flags, emulators).
    Where the probe cannot run (no fbgemm engine), the CPU's VNNI flag decides.
    """
    try:
        packed = _fbgemm_packed(torch.full((1, 4), 127, dtype=torch.int8), torch.ones(1))
        y = torch.ops.quantized.linear_dynamic(torch.ones(1, 4), packed, False).item()  # (1/255) · Σ q_x · q_w
    except RuntimeError:
        return not has_vnni()
    return abs(y - 4 * 127) > 1.0


def _version(t: Tensor) -> int:
    return 0 if t.is_inference() else t._version  # inference tensors cannot change in place, and have no counter


def _fbgemm_packed(qweight: Tensor, scale: Tensor) -> object:
    key = (qweight.data_ptr(), tuple(qweight.shape))
    hit = _FBGEMM_PACKED.get(key)
    if hit is not None and hit[0]() is qweight and hit[1] == _version(qweight):
        return hit[2]
    for k in [k for k, (ref, _, _) in _FBGEMM_PACKED.items() if ref() is None]:  # forget freed weights
        del _FBGEMM_PACKED[k]
    zeros = torch.zeros(qweight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # fbgemm's prepack takes a quantized tensor, whose constructors torch marks deprecated
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        packed = torch.ops.quantized.linear_prepack(
            torch._make_per_channel_quantized_tensor(qweight, scale.double(), zeros, 0), None)
    _FBGEMM_PACKED[key] = (weakref.ref(qweight), _version(qweight), packed)
    return packed


# Without VNNI, fbgemm's AVX2 path adds u8·s8 pairs in saturating int16: 7-bit activations keep it exact.
REDUCE_RANGE = fbgemm_saturates()


@torch.library.custom_op("slimtorch::int8_dynamic_mm", mutates_args=())
def int8_dynamic_mm(x: Tensor, qweight: Tensor, scale: Tensor, passes: int = 1, reduce_range: bool = REDUCE_RANGE) -> Tensor:
    """``(M, K) @ dequant(qweight).T`` → (M, N) float32 with int8 activations, on fbgemm (VNNI where the CPU has it).

    ``x`` is quantized to uint8 per call (asymmetric, over the whole tensor), multiplied int8 × int8 with
    int32 sums, and rescaled. ``passes=2`` also multiplies the rounding residual ``x − dequant(quant(x))``,
    quantized the same way: two int8 digits, ~16-bit activations, at twice the work. One int8 digit is too
    coarse for an LLM's ``lm_head`` input (its outlier channels set the range): SmolLM2's perplexity rose 1.7 %
    with one pass, 0.1 % with two (bf16 activations: 0.4 %).
    """
    packed = _fbgemm_packed(qweight, scale)
    x = x.float().contiguous()  # (M, K)
    y = torch.ops.quantized.linear_dynamic(x, packed, reduce_range)  # (M, N)
    for _ in range(passes - 1):
        x = (x - torch.quantize_per_tensor_dynamic(x, torch.quint8, reduce_range).dequantize()).contiguous()
        y = y + torch.ops.quantized.linear_dynamic(x, packed, reduce_range)
    return y


@int8_dynamic_mm.register_fake
def _int8_dynamic_mm_shape(x: Tensor, qweight: Tensor, scale: Tensor, passes: int = 1, reduce_range: bool = REDUCE_RANGE) -> Tensor:
    return x.new_empty(x.shape[0], qweight.shape[0], dtype=torch.float32)


INT8_ACTIVATION_PASSES = {"int8": 1, "int8x2": 2}


def _int8_dynamic_mm_flop(x_shape: Sequence[int], qweight_shape: Sequence[int], *args: object, out_shape: object = None,
                          **kwargs: object) -> int:
    return 2 * x_shape[0] * x_shape[1] * qweight_shape[0]  # (M, K) @ (N, K).T, per pass counted once, as the float layer


def _register_int8_dynamic_mm_flops() -> None:
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    op = torch.ops.slimtorch.int8_dynamic_mm
    if op not in flop_registry and op.default not in flop_registry:
        register_flop_formula(op)(_int8_dynamic_mm_flop)


_register_int8_dynamic_mm_flops()

# --- which int8 GEMM is fast here ------------------------------------------------------------------

# aten._int_mm is a fast VNNI/AMX kernel on some CPUs and a reference loop on others (165x slower than fp32 on an
# AVX2-only Zen 3); fbgemm's packed GEMM is fast on both. Neither is assumed: both are timed.
DYNAMIC_INT8_KERNELS = ("fbgemm", "int_mm")
KERNEL_PROBE_SHAPES = ((1, 512, 512), (64, 512, 512))  # (rows, in, out): one decode row and one batch


def time_dynamic_int8_kernels(shapes: Sequence[tuple[int, int, int]] = KERNEL_PROBE_SHAPES, calls: int = 5) -> dict[str, float]:
    """Median seconds of one :class:`DynamicInt8Linear` forward per kernel, summed over ``shapes``, on 1 CPU thread.

    A kernel that fails here (no fbgemm/qnnpack engine in this torch build) is left out.
    """
    out: dict[str, float] = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.inference_mode(False), torch.no_grad():
        cases = [(DynamicInt8Linear.from_linear(nn.Linear(k, n, device="cpu")), torch.randn(rows, k, generator=gen, device="cpu"))
                 for rows, k, n in shapes]
    try:
        with torch.no_grad():
            for kernel in DYNAMIC_INT8_KERNELS:
                try:
                    for layer, _ in cases:
                        layer.kernel = kernel
                    # the first (untimed) call packs the weight; a reference loop (> 0.5 s a call) is timed once
                    out[kernel] = sum(median_call_seconds(functools.partial(layer, x), 0.5, calls) for layer, x in cases)
                except RuntimeError:
                    continue
    finally:
        torch.set_num_threads(previous)
    return out


def fastest_dynamic_int8_kernel(timings: dict[str, float]) -> str:
    """The kernel to use given :func:`time_dynamic_int8_kernels`: ``int_mm`` only when clearly (> 10 %) faster than fbgemm."""
    if "fbgemm" not in timings:
        return "int_mm" if "int_mm" in timings else "fbgemm"
    return "int_mm" if timings.get("int_mm", float("inf")) < 0.9 * timings["fbgemm"] else "fbgemm"


@functools.cache
def dynamic_int8_kernel_timings() -> dict[str, float]:
    """:func:`time_dynamic_int8_kernels` once per process: every layer of a process then computes on the same kernel."""
    return time_dynamic_int8_kernels()


def dynamic_int8_kernel() -> str:
    """The faster torch dynamic-int8 GEMM on this machine (:func:`fastest_dynamic_int8_kernel` of the process's timings)."""
    return fastest_dynamic_int8_kernel(dynamic_int8_kernel_timings())


# --- weight-only int8 / int4 ---------------------------------------------------------------------


def int4_grid(w: Tensor) -> tuple[Tensor, Tensor]:
    """Asymmetric 4-bit grid of each row of ``w`` (..., gs): ``(scale, minimum)`` (...,), rounded to bf16 as stored."""
    lo, hi = w.amin(-1), w.amax(-1)
    return ((hi - lo) / 15).clamp(min=1e-8).to(torch.bfloat16), lo.to(torch.bfloat16)


def int4_codes(w: Tensor, scale: Tensor, minimum: Tensor) -> Tensor:
    """Codes in [0, 15] of ``w`` on the grid ``q · scale + minimum`` (``scale``/``minimum`` broadcast to ``w``)."""
    return torch.round((w - minimum.float()) / scale.float()).clamp(0, 15)


class WeightOnlyLinear(nn.Module):
    """``y = x @ dequant(W).T + b`` with int8 (per output channel) or grouped int4 weights.

    int8: ``qweight`` (N, K) int8, ``scale`` (N,) — symmetric, ``W ≈ q · scale``.
    int4: ``qweight`` (N, K/2) uint8, two 4-bit codes per byte (low nibble = even column);
    ``scale``/``minimum`` (N, K/group_size) bf16 — asymmetric, ``W ≈ q · scale + minimum``.
    ``activations`` (int8 only): ``"bf16"`` multiplies bf16 activations on torch's weight-only kernel;
    ``"int8"`` quantizes them per call and multiplies int8 × int8 on fbgemm (:func:`int8_dynamic_mm`),
    ~2-3.5x faster for SmolLM2's 49,152 × 576 ``lm_head`` at batch 1 on this VNNI CPU; ``"int8x2"`` adds a
    second pass over the rounding residual (~16-bit activations; about the bf16 kernel's time on a quiet machine).
    """

    qweight: Tensor
    scale: Tensor
    minimum: Tensor  # int4 only
    bias: Tensor | None

    def __init__(self, in_features: int, out_features: int, bits: int = 8, group_size: int = 32, has_bias: bool = True,
                 activations: str = "bf16") -> None:
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8; got {bits}.")
        if activations != "bf16" and (activations not in INT8_ACTIVATION_PASSES or bits != 8):
            raise ValueError(f"activations must be 'bf16', or 'int8' / 'int8x2' for int8 weights; got {activations!r} with "
                             f"{bits}-bit weights.")
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        self.activations = activations
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scale", torch.ones(out_features))
        else:
            groups = in_features // group_size
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
            self.register_buffer("scale", torch.ones(out_features, groups, dtype=torch.bfloat16))
            self.register_buffer("minimum", torch.zeros(out_features, groups, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features) if has_bias else None)
        self._kernel_cache: tuple[int, Tensor, Tensor] | None = None
        self._int8_cache: tuple[int, Tensor, Tensor] | None = None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int = 32) -> WeightOnlyLinear:
        return cls.from_weight(linear.weight, bias_of(linear), bits, group_size)

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight: Tensor, bias: Tensor | None, bits: int, group_size: int = 32) -> WeightOnlyLinear:
        """Round-to-nearest codes of ``weight`` (N, K): a Linear's weight, or an embedding table (V, D)."""
        w = weight.detach().float()  # (N, K)
        out = cls(w.shape[1], w.shape[0], bits, group_size, bias is not None)
        if bias is not None and out.bias is not None:  # out has a bias exactly when one is given
            out.bias.copy_(bias.detach().float())
        if bits == 8:
            scale = (w.abs().amax(1) / 127).clamp(min=1e-12)  # (N,)
            out.qweight.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            out.scale.copy_(scale)
            return out
        wg = w.reshape(w.shape[0], -1, group_size)  # (N, K/gs, gs)
        scale, lo = int4_grid(wg)
        q = int4_codes(wg, scale[..., None], lo[..., None]).reshape(w.shape)  # (N, K)
        return out.set_int4_(q, scale, lo)

    @torch.no_grad()
    def set_int4_(self, codes: Tensor, scale: Tensor, minimum: Tensor) -> WeightOnlyLinear:
        """Store int4 ``codes`` (N, K) in [0, 15] with ``scale``/``minimum`` (N, K/group_size), in place."""
        q = codes.to(torch.uint8)
        self.qweight.copy_(q[:, 0::2] | (q[:, 1::2] << 4))
        self.scale.copy_(scale)
        self.minimum.copy_(minimum)
        self._kernel_cache = None
        return self

    @property
    def weight(self) -> Tensor:
        """A shape/dtype stand-in on the meta device, for code that reads ``layer.weight`` of what it takes for an nn.Linear.

        ``nn.TransformerEncoderLayer``'s fast-path check and T5's FFN (``wo.weight.dtype``) do; a meta tensor holds no data,
        so the fast path (which would need the float weight) is refused and the layer is called as a module.
        """
        return torch.empty(self.out_features, self.in_features, device="meta")

    def codes(self) -> Tensor:
        """Unpacked int4 codes (N, K) in [0, 15]."""
        low, high = self.qweight & 0x0F, self.qweight >> 4
        return torch.stack([low, high], -1).reshape(self.out_features, self.in_features)

    def dequantized_weight(self) -> Tensor:
        """The float weight (N, K) the kernels compute with."""
        if self.bits == 8:
            return self.qweight.float() * self.scale[:, None]
        q = self.codes().float().reshape(self.out_features, -1, self.group_size)
        return (q * self.scale.float()[..., None] + self.minimum.float()[..., None]).reshape(self.out_features, self.in_features)

    def dequantized_rows(self, rows: Tensor) -> Tensor:
        """Float rows ``rows`` (...,) of the weight, (..., K): only those rows are unpacked (an embedding lookup)."""
        if self.bits == 8:
            return self.qweight[rows].float() * self.scale[rows].float().unsqueeze(-1)
        packed = self.qweight[rows]  # (..., K/2)
        codes = torch.stack([packed & 0x0F, packed >> 4], -1).reshape(*rows.shape, -1, self.group_size)  # (..., K/gs, gs)
        w = codes.float() * self.scale[rows].float().unsqueeze(-1) + self.minimum[rows].float().unsqueeze(-1)
        return w.reshape(*rows.shape, self.in_features)

    def _int8_kernel_args(self) -> tuple[Tensor, Tensor]:
        # torch 2.13's CPU int8 kernel reads out of bounds (segfaults) unless N % 16 == 0 and K % 32 == 0,
        # measured on this machine: pad with zero rows/columns, slice the outputs.
        if torch.compiler.is_compiling() and self._int8_cache is not None:
            return self._int8_cache[1], self._int8_cache[2]  # packed before compiling (pack_for_kernels_): no data_ptr guard
        key = self.qweight.data_ptr()
        if self._int8_cache is None or self._int8_cache[0] != key:
            pad_n, pad_k = -self.out_features % 16, -self.in_features % 32
            qweight = F.pad(self.qweight, (0, pad_k, 0, pad_n)).contiguous()  # (N + pad_n, K + pad_k)
            scale = F.pad(self.scale.float(), (0, pad_n)).to(torch.bfloat16).contiguous()
            self._int8_cache = (key, qweight, scale)
        return self._int8_cache[1], self._int8_cache[2]

    def _int4_kernel_args(self) -> tuple[Tensor, Tensor]:
        if torch.compiler.is_compiling() and self._kernel_cache is not None:
            return self._kernel_cache[1], self._kernel_cache[2]
        key = self.qweight.data_ptr()
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            pad = -self.out_features % 16  # the packed kernel needs N divisible by 16: pad rows, slice outputs
            codes = F.pad(self.codes().to(torch.int32), (0, 0, 0, pad))  # (N + pad, K)
            packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
            scale = F.pad(self.scale.float(), (0, 0, 0, pad)).t()  # (K/gs, N + pad)
            zero = F.pad(self.minimum.float(), (0, 0, 0, pad)).t() + 8 * scale  # kernel: (q - 8) · scale + zero
            scales_zeros = torch.stack([scale, zero], -1).to(torch.bfloat16).contiguous()  # (K/gs, N + pad, 2)
            self._kernel_cache = (key, packed, scales_zeros)
        return self._kernel_cache[1], self._kernel_cache[2]

    def pack_for_kernels_(self) -> WeightOnlyLinear:
        """Build the kernels' packed weights now (they are otherwise built on first use), e.g. before ``torch.compile``."""
        if self.activations in INT8_ACTIVATION_PASSES:
            _fbgemm_packed(self.qweight, self.scale)
        elif self.bits == 8:
            self._int8_kernel_args()
        else:
            self._int4_kernel_args()
        return self

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        if self.activations != "bf16":
            passes = INT8_ACTIVATION_PASSES[self.activations]
            y = int8_dynamic_mm(x.reshape(-1, self.in_features), self.qweight, self.scale, passes)  # (B·T, N) float32
            y = y + self.bias if self.bias is not None else y
            return y.reshape(*shape[:-1], self.out_features).to(x.dtype)
        # bf16 activations: torch's fast CPU path for these kernels (fp32 activations hit a slow reference path)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # (B·T, K)
        if self.bits == 8:
            qweight, scale = self._int8_kernel_args()
            if qweight.shape[1] != self.in_features:
                x2 = F.pad(x2, (0, qweight.shape[1] - self.in_features))
            y = torch.ops.aten._weight_int8pack_mm(x2, qweight, scale)[:, : self.out_features]
        else:
            packed, scales_zeros = self._int4_kernel_args()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, self.group_size, scales_zeros)[:, : self.out_features]
        y = y.float()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)  # (..., N)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        acts = f", activations={self.activations}" if self.activations != "bf16" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}{acts}"


def weight_only_(model: nn.Module, fqns: list[str], bits: int, group_size: int = 32) -> nn.Module:
    """Replace the Linear layers named in ``fqns`` by :class:`WeightOnlyLinear`, in place."""
    for fqn in fqns:
        set_submodule(model, fqn, WeightOnlyLinear.from_linear(linear_at(model, fqn), bits, group_size))
    return model


def int8_activations_(model: nn.Module, activations: str = "int8") -> list[str]:
    """Switch every int8 :class:`WeightOnlyLinear` to ``activations`` (``int8``/``int8x2``) on fbgemm, in place; returns their fqns."""
    if activations not in INT8_ACTIVATION_PASSES:
        raise ValueError(f"activations must be one of {sorted(INT8_ACTIVATION_PASSES)}; got {activations!r}.")
    switched = []
    for fqn, module in model.named_modules():
        if isinstance(module, WeightOnlyLinear) and module.bits == 8:
            module.activations = activations
            switched.append(fqn)
    return switched


# --- embedding tables ----------------------------------------------------------------------------


class WeightOnlyEmbedding(nn.Module):
    """An embedding lookup on a :class:`WeightOnlyLinear`'s packed weight, dequantized row by row.

    An embedding table (V, D) has the layout of a Linear weight (out, in), so one packed tensor serves
    both: int8 rows symmetric per row, or int4 rows asymmetric per ``group_size`` columns. A causal
    LM whose ``lm_head`` is tied to its input embedding keeps one table: ``tied_to`` names that
    quantized ``lm_head``, which owns (and saves) the table; the lookup reads it. Otherwise the
    table is this module's own child ``table``.
    """

    def __init__(self, table: WeightOnlyLinear, tied_to: str | None = None, padding_idx: int | None = None) -> None:
        super().__init__()
        if tied_to is None:
            self.table = table
        else:  # not registered: the tied Linear is the one place the table lives (state dict, .to(), counts)
            self.__dict__["table"] = table
        self.tied_to, self.padding_idx = tied_to, padding_idx
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features

    def forward(self, ids: Tensor) -> Tensor:
        return self.table.dequantized_rows(ids)  # (..., D)

    def extra_repr(self) -> str:
        shared = f", tied_to={self.tied_to}" if self.tied_to else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.table.bits}{shared}"


def tied_linears(model: nn.Module) -> dict[str, str]:
    """``{embedding fqn: fqn of the nn.Linear whose weight is that table}`` (a tied ``lm_head``)."""
    tables = {id(m.weight): fqn for fqn, m in model.named_modules() if type(m) is nn.Embedding}
    return {tables[id(m.weight)]: fqn for fqn, m in model.named_modules() if type(m) is nn.Linear and id(m.weight) in tables}


def quantize_embeddings_(model: nn.Module, bits: int, group_size: int, ties: dict[str, str],
                         exclude: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Replace each ``nn.Embedding`` by a :class:`WeightOnlyEmbedding` at ``bits``, in place.

    Args:
        ties: :func:`tied_linears` of the model *before* its Linear layers were quantized. A tied Linear
            already quantized at ``bits`` (and ``group_size``) lends its table as it is (e.g. GPTQ codes); a
            tied Linear still float becomes the table; one quantized otherwise is left as is and the
            embedding gets its own table (the tie is then broken: two tables are stored).
        exclude: fqn patterns kept float (as in :func:`select_linears`).

    Returns:
        ``(quantized, skipped)`` embedding fqns; int4 needs ``embedding_dim`` divisible by ``group_size``.
    """
    done, skipped = [], []
    for fqn, module in list(model.named_modules()):
        if type(module) is not nn.Embedding:
            continue
        if _matches(fqn, exclude) or (bits == 4 and module.embedding_dim % group_size):
            skipped.append(fqn)
            continue
        table, tied_to = None, ties.get(fqn)
        if tied_to is not None:
            linear = model.get_submodule(tied_to)
            if type(linear) is nn.Linear:
                table = WeightOnlyLinear.from_linear(linear, bits, group_size)
                set_submodule(model, tied_to, table)
            elif isinstance(linear, WeightOnlyLinear) and linear.bits == bits and (bits == 8 or linear.group_size == group_size):
                table = linear
            else:
                tied_to = None
        if table is None:
            table = WeightOnlyLinear.from_weight(module.weight, None, bits, group_size)
        set_submodule(model, fqn, WeightOnlyEmbedding(table, tied_to, module.padding_idx))
        done.append(fqn)
    return done, skipped


def _matches(fqn: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(fqn, p) or fqn.startswith(p + ".") or fqn == p for p in patterns)


# --- bf16 ----------------------------------------------------------------------------------------


class BFloat16Module(nn.Module):
    """Run ``inner`` in bfloat16: float inputs are cast to bf16 and the output back to float32."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.to(torch.bfloat16)

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor:
        to_bf16 = lambda t: t.to(torch.bfloat16) if isinstance(t, Tensor) and t.is_floating_point() else t
        out = self.inner(*[to_bf16(a) for a in args], **{k: to_bf16(v) for k, v in kwargs.items()})
        return out.float()

"""Multiply-accumulate counts from a real forward pass.

Torch models run once under :class:`torch.utils.flop_counter.FlopCounterMode`, which counts every
matmul, convolution (groups, stride and padding included, through the output shape) and attention
kernel that actually executes; MACs = FLOPs / 2. Packed quantized torch modules (``torch.ao``
dynamic/static int8 Linear and Conv) and ``nn.LSTM`` (one fused kernel), invisible to that counter, are
counted with forward hooks.
Models that run in onnxruntime are counted from their ONNX graph. Element-wise ops (ReLU, norms,
softmax) are not counted: they are small next to the matmuls and the convention in the field ignores them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from slimtorch.core import Batch, batch_len, forward
from slimtorch.measure.modes import eval_mode
from slimtorch.measure.onnx_graph import onnx_macs, onnx_model_of, runs_onnx_graph
from slimtorch.measure.params import count_nonzero, count_params, source_counts


def count_macs(model: nn.Module, example_input: Batch) -> int | None:
    """MACs of one forward pass **per example**: the count on ``example_input`` divided by its batch size.

    ``measure`` passes a batch of 1, so for text the count is at that example's token length.
    Returns None when the model cannot be counted (see :func:`count_macs_noted` for the reason).

    Example:
        >>> count_macs(nn.Linear(64, 10), torch.zeros(1, 64))
        640
    """
    return count_macs_noted(model, example_input)[0]


def count_macs_noted(model: nn.Module, example_input: Batch) -> tuple[int | None, list[str]]:
    """Like :func:`count_macs`, also returning notes on what could not be counted."""
    n = max(batch_len(example_input), 1)
    counts = source_counts(model)
    if counts is not None:
        return counts.macs, ["MACs of the torch graph the program was exported from (its runtime runs the same operations)."]
    if runs_onnx_graph(model):
        graph = onnx_model_of(model)
        if graph is None:
            return None, ["MACs not counted: the onnxruntime wrapper exposes no ONNX graph."]
        macs, notes = onnx_macs(graph, example_input)
        return (None if macs is None else macs // n), notes
    hooked: list[int] = []
    handles = [m.register_forward_hook(_quantized_hook(hooked)) for m in model.modules() if _is_packed_quantized(m)]
    handles += [m.register_forward_hook(_lstm_hook(hooked)) for m in model.modules() if isinstance(m, nn.LSTM)]
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    try:
        with eval_mode(model), torch.no_grad(), counter:
            forward(model, example_input)
    finally:
        for h in handles:
            h.remove()
    total = counter.get_total_flops() // 2 + sum(hooked)
    return total // n, []


@dataclass(frozen=True)
class LayerMacs:
    """One weight layer's MACs per example: ``macs`` dense, ``nonzero_macs`` with its zero weights skipped."""

    macs: float
    nonzero_macs: float


@dataclass(frozen=True)
class QuickCounts:
    """What a prune stage or the planner needs before and after a change, counted as the report counts them."""

    params: int
    nonzero_params: int
    macs: float  # per example, attention included (:func:`count_macs`)
    nonzero_macs: float  # ``macs`` less the Linear/Conv MACs a sparse kernel would skip


def is_weight_layer(module: nn.Module) -> bool:
    """Linear, Conv1d/2d/3d and transformers' GPT-2 ``Conv1D``: the layers whose MACs pruning changes."""
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or type(module).__name__ == "Conv1D"


def layer_macs(model: nn.Module, example: Batch) -> dict[str, LayerMacs]:
    """fqn -> :class:`LayerMacs` for every weight layer (:func:`is_weight_layer`) that ran on ``example``."""
    found: dict[str, LayerMacs] = {}
    n = batch_len(example)

    def hook(fqn: str, module: nn.Module) -> Any:
        def run(_: nn.Module, __: Any, out: Tensor) -> None:
            w = cast(Tensor, module.weight)  # masked through its parametrization when pruned
            is_conv = isinstance(module, nn.modules.conv._ConvNd)
            fan_in = w[0].numel() if is_conv else (w.shape[0] if type(module).__name__ == "Conv1D" else w.shape[1])
            macs = out.numel() / n * fan_in
            density = float((w != 0).float().mean())
            prev = found.get(fqn, LayerMacs(0.0, 0.0))
            found[fqn] = LayerMacs(prev.macs + macs, prev.nonzero_macs + macs * density)
        return run

    handles = [m.register_forward_hook(hook(f, m)) for f, m in model.named_modules() if f and is_weight_layer(m)]
    try:
        with eval_mode(model), torch.no_grad():
            forward(model, example)
    finally:
        for h in handles:
            h.remove()
    return found


def quick_counts(model: nn.Module, example: Batch) -> QuickCounts:
    """Params, nonzeros and MACs per example exactly as the report counts them (masked weights count as zeros)."""
    per_layer = layer_macs(model, example)
    dense = count_macs(model, example)
    skipped = sum(v.macs - v.nonzero_macs for v in per_layer.values())
    total = float(dense) if dense is not None else sum(v.macs for v in per_layer.values())
    return QuickCounts(params=count_params(model), nonzero_params=count_nonzero(model), macs=total,
                       nonzero_macs=total - skipped)


def _cpu_sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _weight_only_mm_flop(x_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """x (M, K) times a packed (N, K) weight-only int8/int4 matrix -> (M, N): 2·M·N·K FLOPs."""
    return 2 * math.prod(out_shape) * x_shape[-1]


def _extra_formulas() -> dict[Any, Any]:
    # torch's counter knows the CUDA attention kernels and plain matmuls; the CPU flash-attention
    # kernel and the weight-only int8/int4 CPU matmuls need formulas of their own.
    aten = torch.ops.aten
    table = {"_scaled_dot_product_flash_attention_for_cpu": _cpu_sdpa_flop, "_weight_int8pack_mm": _weight_only_mm_flop,
             "_weight_int4pack_mm_for_cpu": _weight_only_mm_flop, "_weight_int4pack_mm": _weight_only_mm_flop}
    return {getattr(aten, name): fn for name, fn in table.items() if hasattr(aten, name)}


_EXTRA_FORMULAS = _extra_formulas()


def _is_packed_quantized(module: nn.Module) -> bool:
    """torch.ao quantized Linear/Conv modules (their packed kernels are invisible to FlopCounterMode)."""
    is_layer = hasattr(module, "in_features") or hasattr(module, "in_channels")
    return "quantized" in type(module).__module__ and is_layer


def _lstm_hook(acc: list[int]) -> Any:
    """nn.LSTM runs as one fused kernel that FlopCounterMode does not see (GRU and RNN decompose into counted matmuls)."""
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        lstm: Any = module
        x = inputs[0]
        if isinstance(x, nn.utils.rnn.PackedSequence):
            steps = int(x.data.shape[0])  # every (time, sequence) pair that really ran
        else:
            steps = int(x.shape[0] * x.shape[1]) if x.dim() == 3 else int(x.shape[0])  # (T, B) or (B, T); unbatched (T, I)
        out_size = lstm.proj_size or lstm.hidden_size
        directions = 2 if lstm.bidirectional else 1
        per_step = 0
        for layer in range(lstm.num_layers):
            width = lstm.input_size if layer == 0 else out_size * directions
            gates = 4 * lstm.hidden_size * (width + out_size)  # W_ih x + W_hh h for the four gates
            per_step += directions * (gates + (lstm.hidden_size * lstm.proj_size if lstm.proj_size else 0))
        acc.append(steps * per_step)

    return hook


def _quantized_hook(acc: list[int]) -> Any:
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        if hasattr(module, "in_features"):  # Linear: every input row times the (out, in) weight
            acc.append(inputs[0].numel() // module.in_features * module.in_features * module.out_features)
        elif hasattr(module, "kernel_size"):  # Conv: every output element sums (C_in / groups) × kernel
            conv: Any = module  # a quantized conv (torch.ao or a backend's): not an nn.Conv subclass, same attributes
            per_out = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
            acc.append(output.numel() * per_out)

    return hook

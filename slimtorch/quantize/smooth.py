"""SmoothQuant-style smoothing of Linear inputs before int8 with per-tensor activation ranges.

Xiao et al., "SmoothQuant" (https://arxiv.org/abs/2211.10438): a few input channels of a transformer's
Linears carry activations 10-100× larger than the rest, and one per-tensor int8 scale (onnxruntime's
dynamic int8 computes one per batch) must cover them, so every other channel gets few levels. Dividing
input channel ``j`` by ``s_j`` and multiplying the weight's column ``j`` by ``s_j`` leaves the product
unchanged and moves the range into the weights, which are quantized per output channel:

    s_j = max|X_j|^α / max|W_j|^(1-α)      (α = ``smooth``; max|W_j| over every Linear reading X)

In a pre-LN transformer ``1/s`` folds into the LayerNorm before the Linear. In a post-LN encoder (BERT,
MiniLM) that LayerNorm's output is also the residual, so the division is an explicit ``Mul`` before the
Linear: one per distinct input (the query, key and value projections read the same tensor and share it).
The ``Mul`` is cheap against the MatMul it feeds. The model's float outputs are unchanged (to rounding).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from slimtorch.batch import forward
from slimtorch.errors import NotCalibratedError


class SmoothedLinear(nn.Module):
    """``linear(x · inv_scale)`` with the weight's input columns already multiplied by ``1 / inv_scale``.

    Linears that read the same tensor hold the same ``inv_scale`` tensor, so the export has one ``Mul``
    for them (onnxruntime's common-subexpression pass merges the identical nodes).
    """

    inv_scale: Tensor

    def __init__(self, linear: nn.Linear, inv_scale: Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_scale", inv_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x * self.inv_scale)


@dataclass
class SmoothingResult:
    """What smoothing did: groups of Linears sharing one input and how far their input ranges were flattened."""

    alpha: float
    groups: list[list[str]]
    # per group: max over channels of max|X_j| divided by the median channel's, before and after
    outlier_ratio_before: list[float]
    outlier_ratio_after: list[float]

    def to_details(self) -> dict[str, Any]:
        before, after = self._max_ratios()
        return {"alpha": self.alpha, "linears": sum(len(g) for g in self.groups), "inputs": len(self.groups),
                "outlier_ratio_before_max": before, "outlier_ratio_after_max": after}

    def note(self) -> str:
        """One report sentence: how many Linears were smoothed and how far the worst input range was flattened."""
        before, after = self._max_ratios()
        return (f"SmoothQuant α {self.alpha}: {sum(len(g) for g in self.groups)} Linears on {len(self.groups)} inputs; the largest "
                f"input channel's range over the median channel's went from {before} to {after}")

    def _max_ratios(self) -> tuple[float, float]:
        return round(max(self.outlier_ratio_before, default=0.0), 2), round(max(self.outlier_ratio_after, default=0.0), 2)


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def input_statistics(model: nn.Module, batches: Iterable[Any]) -> tuple[dict[str, Tensor], list[list[str]]]:
    """Per Linear: max |input| of each input channel over ``batches``; and the groups of Linears that read one tensor.

    Padding positions count, as they do in the per-batch range onnxruntime computes at run time.
    """
    linears = _linears(model)
    absmax: dict[str, Tensor] = {}
    # id of an input tensor -> (the tensor, kept alive so its id is not reused within the batch; the Linears that read it)
    readers: dict[int, tuple[Tensor, list[str]]] = {}
    groups: dict[tuple[str, ...], None] = {}

    def hook(name: str) -> Any:
        def record(_: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].detach()
            seen = x.abs().reshape(-1, x.shape[-1]).amax(0).float().cpu()
            absmax[name] = seen if name not in absmax else torch.maximum(absmax[name], seen)
            readers.setdefault(id(inputs[0]), (inputs[0], []))[1].append(name)
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in linears.items()]
    try:
        count = 0
        for x in batches:
            readers.clear()
            forward(model, x)
            for _, names in readers.values():
                groups[tuple(names)] = None
            count += 1
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise NotCalibratedError("quantize.smooth measures each Linear's input range on calibration batches and got none: the "
                                 "calibration split is empty. Use a non-empty quantize.calibration_split, or remove smooth.")
    # A Linear that read different tensors across batches (unusual) is smoothed on its own.
    grouped: list[list[str]] = []
    placed: set[str] = set()
    for group in groups:
        if len(group) > 1 and all(sum(n in other for other in groups) == 1 for n in group):
            grouped.append(list(group))
            placed.update(group)
    grouped += [[n] for n in linears if n in absmax and n not in placed]
    return absmax, grouped


def _outlier_ratio(absmax: Tensor) -> float:
    return float(absmax.max() / absmax.median().clamp(min=1e-12))


@torch.no_grad()
def smooth_(model: nn.Module, batches: Iterable[Any], alpha: float) -> SmoothingResult:
    """Replace every ``nn.Linear`` of ``model`` by a :class:`SmoothedLinear` (in place); float outputs stay equal.

    Args:
        model: a float model in eval mode (pruning masks already baked).
        batches: calibration inputs (what :func:`slimtorch.batch.forward` takes).
        alpha: migration strength in (0, 1): 0 leaves activations as they are, 1 moves all their range into the weights.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"quantize.smooth must be between 0 and 1 (exclusive), e.g. 0.5; got {alpha}.")
    absmax, groups = input_statistics(model, batches)
    linears = _linears(model)
    before, after = [], []
    for group in groups:
        x_max = absmax[group[0]]
        for name in group[1:]:
            x_max = torch.maximum(x_max, absmax[name])
        w_max = torch.stack([linears[n].weight.detach().abs().amax(0).float().cpu() for n in group]).amax(0)
        scale = (x_max.clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        # A channel that was (almost) zero on every calibration batch has no range to flatten; scaling it up
        # would only magnify whatever it carries on other inputs.
        scale = torch.where(x_max > 1e-6 * x_max.max(), scale, torch.ones_like(scale))
        before.append(_outlier_ratio(x_max))
        after.append(_outlier_ratio(x_max / scale))
        device = linears[group[0]].weight.device
        inv_scale = (1.0 / scale).to(device)
        for name in group:
            linear = linears[name]
            linear.weight.mul_(scale.to(device=device, dtype=linear.weight.dtype))
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, SmoothedLinear(linear, inv_scale))
    return SmoothingResult(alpha, groups, before, after)

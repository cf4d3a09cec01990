"""GPTQ: weight-only int4 that corrects each rounding error with the layer's input statistics.

GPTQ (Frantar et al. 2022, https://arxiv.org/abs/2210.17323) quantizes a Linear's weight ``W`` (N, K)
one input column at a time and spreads each column's rounding error over the columns not yet
quantized, so the layer's *output* on calibration inputs ``X`` stays close to the original's:

    minimize ‖W X − Q X‖²,   H = 2 X Xᵀ / n   (K, K),   H ← H + λ · mean(diag H) · I   (damping λ)
    for column j:  q_j = quant(w_j);  e = (w_j − q_j) / [H⁻¹]_jj;  w_{j+1:} −= e · [H⁻¹]_{j, j+1:}

using the upper Cholesky factor of ``H⁻¹``. The grid is slimtorch's int4 format (asymmetric, one bf16
scale and minimum per ``group_size`` input columns), fixed for each group when the loop reaches its
first column (or, with ``act_order``, up front from the original weights, since columns are then
visited by decreasing ``diag(H)``; ``mse`` picks each range by least error over shrunk min/max), so the
result is stored and run exactly like round-to-nearest int4
(:class:`~slimtorch.quantize._torch.WeightOnlyLinear`). ``H`` of every Linear is collected in one
pass of the float model over the calibration inputs (not layer by layer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from slimtorch.batch import Batch, forward
from slimtorch.errors import NotCalibratedError
from slimtorch.measure.modes import eval_mode
from slimtorch.quantize._torch import WeightOnlyLinear, bias_of, int4_codes, int4_grid, linear_at, set_submodule

if TYPE_CHECKING:
    from slimtorch.data.bundle import DataBundle

log = logging.getLogger(__name__)


@torch.no_grad()
def input_statistics(model: nn.Module, fqns: list[str], batches: Iterable[Batch]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(H = 2 X Xᵀ / n (K, K), mean |x| per input channel (K,))`` of each named Linear's inputs, in one pass over ``batches``."""
    sums = {fqn: torch.zeros(linear_at(model, fqn).in_features, linear_at(model, fqn).in_features, dtype=torch.float64)
            for fqn in fqns}
    abs_sums = {fqn: torch.zeros(linear_at(model, fqn).in_features, dtype=torch.float64) for fqn in fqns}
    counts = dict.fromkeys(fqns, 0)

    def hook(fqn: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def collect(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (B·T, K)
            sums[fqn] += (x.T @ x).double()  # float32 product per batch, float64 sum over batches
            abs_sums[fqn] += x.abs().sum(0).double()
            counts[fqn] += x.shape[0]
        return collect

    handles = [model.get_submodule(fqn).register_forward_pre_hook(hook(fqn)) for fqn in fqns]
    try:
        with eval_mode(model):
            for batch in batches:
                forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    if not any(counts.values()):
        raise NotCalibratedError("calibration saw no inputs; give a non-empty quantize.calibration_split.")
    hessians = {fqn: (2 * sums[fqn] / max(counts[fqn], 1)).float() for fqn in fqns}
    return hessians, {fqn: (abs_sums[fqn] / max(counts[fqn], 1)).float() for fqn in fqns}


def input_hessians(model: nn.Module, fqns: list[str], batches: Iterable[Batch]) -> dict[str, Tensor]:
    """``H = 2 X Xᵀ / n`` (K, K) of each named Linear's inputs over ``batches`` (one forward pass each)."""
    return input_statistics(model, fqns, batches)[0]


def int4_grid_mse(w: Tensor, steps: int = 20, max_shrink: float = 0.2, norm: float = 2.4) -> tuple[Tensor, Tensor]:
    """Like :func:`int4_grid`, but the range ``[p·min, p·max]`` per row of ``w`` (..., gs) is the ``p`` in
    ``[1 − max_shrink, 1]`` with the least ``Σ|w − deq(w)|^norm`` (GPTQ's ``mse`` grid: clipping outliers
    can lower the error of all other weights of the group)."""
    lo, hi = w.amin(-1), w.amax(-1)  # (...,)
    best_err = torch.full_like(lo, float("inf"))
    best_scale, best_min = int4_grid(w)
    for i in range(steps + 1):
        p = 1 - max_shrink * i / steps
        scale = ((hi - lo) * p / 15).clamp(min=1e-8).to(torch.bfloat16)
        minimum = (lo * p).to(torch.bfloat16)
        q = int4_codes(w, scale[..., None], minimum[..., None])
        err = (q * scale.float()[..., None] + minimum.float()[..., None] - w).abs().pow(norm).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale, best_min = torch.where(better, scale, best_scale), torch.where(better, minimum, best_min)
    return best_scale, best_min


@torch.no_grad()
def gptq_int4(weight: Tensor, hessian: Tensor, group_size: int, damping: float = 0.01, act_order: bool = False,
              mse: bool = False, block_size: int = 128) -> tuple[Tensor, Tensor, Tensor]:
    """GPTQ-quantize ``weight`` (N, K): ``(codes (N, K) in [0, 15], scale, minimum (N, K/group_size) bf16)``.

    Args:
        act_order: quantize columns in order of decreasing ``diag(H)`` (the most used inputs first, while
            the most columns are left to absorb their error); group grids are then fixed up front from the
            original weights ("static groups") so each group keeps one scale as the packed format needs.
        mse: choose each group's range by :func:`int4_grid_mse` instead of min/max.
    """
    w = weight.detach().float().clone()  # (N, K)
    n, k = w.shape
    h = hessian.clone().float()
    dead = torch.diag(h) == 0  # inputs that were always zero: their columns do not matter
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damping * torch.diag(h).mean() * torch.eye(k)
    grid = int4_grid_mse if mse else int4_grid
    scales = torch.zeros(n, k // group_size, dtype=torch.bfloat16)
    minima = torch.zeros_like(scales)
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(k)
    if act_order:
        scales, minima = grid(w.reshape(n, -1, group_size))  # (N, K/gs) each, from the original weights
        w, h = w[:, perm], h[perm][:, perm]
    else:
        block_size = group_size  # one block per group: each group's grid is set from its updated weights
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # (K, K)
    codes = torch.zeros(n, k)
    for start in range(0, k, block_size):
        end = min(start + block_size, k)
        block, block_hinv = w[:, start:end].clone(), hinv[start:end, start:end]  # (N, bs), (bs, bs)
        if not act_order:
            scales[:, start // group_size], minima[:, start // group_size] = grid(block)
        errors = torch.zeros_like(block)
        for j in range(end - start):
            group = int(perm[start + j]) // group_size
            scale, minimum = scales[:, group], minima[:, group]  # (N,) each
            q = int4_codes(block[:, j], scale, minimum)  # (N,)
            codes[:, start + j] = q
            err = (block[:, j] - (q * scale.float() + minimum.float())) / block_hinv[j, j]
            block[:, j:] -= err[:, None] * block_hinv[j, j:][None]
            errors[:, j] = err
        w[:, end:] -= errors @ hinv[start:end, end:]  # lazy update of the columns after this block
    return codes[:, torch.argsort(perm)], scales, minima


def gptq_(model: nn.Module, fqns: list[str], batches: list[Batch], group_size: int, damping: float = 0.01,
          act_order: bool = True, mse: bool = True) -> dict[str, float]:
    """Replace the named Linear layers by GPTQ-calibrated int4 :class:`WeightOnlyLinear`, in place.

    Returns:
        ``{fqn: relative output error}``: ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` on the calibration inputs.
    """
    hessians = input_hessians(model, fqns, batches)
    errors = {}
    for fqn in fqns:
        linear = linear_at(model, fqn)
        bias = bias_of(linear)
        codes, scale, minimum = gptq_int4(linear.weight, hessians[fqn], group_size, damping, act_order=act_order, mse=mse)
        out = WeightOnlyLinear(linear.in_features, linear.out_features, 4, group_size, bias is not None)
        if bias is not None and out.bias is not None:  # out has a bias exactly when linear has one
            out.bias.copy_(bias.detach().float())
        out.set_int4_(codes, scale, minimum)
        delta = (out.dequantized_weight() - linear.weight.detach().float())  # (N, K)
        h = hessians[fqn]
        errors[fqn] = round(((delta @ h) * delta).sum().item() / max(((linear.weight @ h) * linear.weight).sum().item(), 1e-12), 6)
        set_submodule(model, fqn, out)
    return errors


def calibration_inputs(model: nn.Module, data: DataBundle, split: str, max_examples: int, seq_tokens: int = 256) -> list[Batch]:
    """Model inputs from the first ``max_examples`` examples of ``split`` (shuffled with seed 0).

    Text examples for a model with a tokenizer (a Hugging Face causal LM) are joined with newlines,
    tokenized with the model's own tokenizer and cut into sequences of ``seq_tokens`` tokens (no
    padding, so no pad positions enter ``H``); other data is used batch by batch as the loader gives it.
    """
    dataset = getattr(data, split, None)
    if dataset is None or len(dataset) == 0:
        raise NotCalibratedError(f"GPTQ and AWQ need calibration inputs, but the {split!r} split is empty or missing; "
                                 "set quantize.calibration_split to train, val or transfer.")
    tokenizer = getattr(getattr(model, "inner", model), "tokenizer", None)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_examples].tolist()
    if tokenizer is not None and isinstance(dataset[0][0], str):
        ids = tokenizer("\n".join(str(dataset[i][0]) for i in order), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        return [{"input_ids": ids[None, s : s + seq_tokens]} for s in range(0, len(ids) - 1, seq_tokens)]
    subset = torch.utils.data.Subset(dataset, order)
    return [x for x, _ in data.loader(subset)]

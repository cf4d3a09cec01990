"""AWQ: activation-aware per-channel scaling before int4 rounding, then output-aware clipping.

AWQ (Lin et al. 2023, https://arxiv.org/abs/2306.00978) protects the input channels that carry large
activations: the weights ``W`` (N, K) of the Linear layers reading one output ``x`` are multiplied by a
per-channel scale ``s`` (K,) and the layer that produces ``x`` is divided by it, which leaves the float
model unchanged, while rounding ``W · diag(s)`` hurts the salient channels less:

    s = mean|x|^α / sqrt(max · min),   α = argmin over {0, 1/20, ..., 19/20} of  tr(Δ H Δᵀ),
    Δ = Q(W · diag(s)) · diag(s)⁻¹ − W,   H = 2 X Xᵀ / n   (the layer-output error on calibration inputs)

Then each group's range is clipped to ``[-p, p] · max|w|`` with the ``p ∈ [0.5, 1]`` of least output
error ``Δ_g H_gg Δ_gᵀ`` (the diagonal block of ``H`` for that group), except for query and key
projections, whose errors the attention softmax amplifies (AWQ leaves them unclipped). The result is
slimtorch's int4 format (:class:`~slimtorch.quantize._torch.WeightOnlyLinear`), run like round-to-nearest.

Where ``1/s`` goes, in a LLaMA-style decoder layer: ``input_layernorm`` → q/k/v projections,
``post_attention_layernorm`` → gate/up projections, ``up_proj`` rows → ``down_proj``, and ``v_proj``
rows → ``o_proj`` when they have the same width (not under grouped-query attention, as in AutoAWQ).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from slimtorch.batch import Batch
from slimtorch.errors import UnsupportedModuleError
from slimtorch.quantize._torch import WeightOnlyLinear, bias_of, int4_codes, int4_grid, linear_at, set_submodule
from slimtorch.quantize.gptq import input_statistics

log = logging.getLogger(__name__)

ALPHA_GRID = 20
CLIP_STEPS, MAX_SHRINK = 20, 0.5
UNCLIPPED = ("q_proj", "k_proj")  # attention scores amplify their errors: AWQ keeps their full range


@dataclass(frozen=True)
class ScaleGroup:
    """The Linear layers that read the output of ``previous`` (an RMSNorm, or a Linear whose rows absorb ``1/s``)."""

    previous: str
    linears: tuple[str, ...]


def llama_scale_groups(model: nn.Module) -> list[ScaleGroup]:
    """The scale groups of every LLaMA-style decoder layer (``self_attn``, ``mlp`` and their two norms)."""
    groups = []
    for fqn, layer in model.named_modules():
        if not all(hasattr(layer, name) for name in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")):
            continue
        p = f"{fqn}." if fqn else ""
        attn, mlp = f"{p}self_attn.", f"{p}mlp."
        groups.append(ScaleGroup(f"{p}input_layernorm", (f"{attn}q_proj", f"{attn}k_proj", f"{attn}v_proj")))
        v, o = linear_at(model, f"{attn}v_proj"), linear_at(model, f"{attn}o_proj")
        if v.out_features == o.in_features:
            groups.append(ScaleGroup(f"{attn}v_proj", (f"{attn}o_proj",)))
        groups.append(ScaleGroup(f"{p}post_attention_layernorm", (f"{mlp}gate_proj", f"{mlp}up_proj")))
        groups.append(ScaleGroup(f"{mlp}up_proj", (f"{mlp}down_proj",)))
    return groups


def fake_int4(w: Tensor, group_size: int) -> Tensor:
    """Round-to-nearest int4 of ``w`` (N, K) on slimtorch's grid, dequantized."""
    wg = w.reshape(w.shape[0], -1, group_size)  # (N, K/gs, gs)
    scale, minimum = int4_grid(wg)
    q = int4_codes(wg, scale[..., None], minimum[..., None])
    return (q * scale.float()[..., None] + minimum.float()[..., None]).reshape(w.shape)


def output_error(delta: Tensor, hessian: Tensor) -> float:
    """``tr(Δ H Δᵀ)``: the summed squared output error of weight error ``Δ`` (N, K) on inputs with ``H`` (K, K)."""
    return ((delta @ hessian) * delta).sum().item()


@torch.no_grad()
def search_scale(weight: Tensor, hessian: Tensor, abs_mean: Tensor, group_size: int,
                 grid: int = ALPHA_GRID) -> tuple[Tensor, float, float]:
    """The AWQ scale ``s`` (K,) of the stacked weights (ΣN, K) sharing one input: ``(s, α, error ratio to α = 0)``."""
    salience = abs_mean.clamp(min=1e-4)
    best: tuple[float, Tensor, float] = (float("inf"), torch.ones_like(salience), 0.0)
    plain = 0.0
    for i in range(grid):
        alpha = i / grid
        s = salience.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        error = output_error(fake_int4(weight * s, group_size) / s - weight, hessian)
        plain = error if i == 0 else plain
        if error < best[0]:
            best = (error, s, alpha)
    return best[1], best[2], best[0] / max(plain, 1e-30)


@torch.no_grad()
def clipped_int4(weight: Tensor, hessian: Tensor, group_size: int, clip: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """``(codes (N, K), scale, minimum (N, K/gs) bf16)``: each group's range clipped by least output error."""
    n, k = weight.shape
    wg = weight.reshape(n, -1, group_size)  # (N, G, gs)
    best_scale, best_min = int4_grid(wg)
    if clip:
        g = k // group_size
        blocks = torch.stack([hessian[i * group_size:(i + 1) * group_size, i * group_size:(i + 1) * group_size] for i in range(g)])
        lo, hi, absmax = wg.amin(-1), wg.amax(-1), wg.abs().amax(-1)  # (N, G) each
        best_err = torch.full_like(lo, float("inf"))
        for i in range(CLIP_STEPS):
            limit = absmax * (1 - MAX_SHRINK * i / CLIP_STEPS)
            scale, minimum = int4_grid(torch.stack([torch.maximum(lo, -limit), torch.minimum(hi, limit)], -1))
            q = int4_codes(wg, scale[..., None], minimum[..., None])
            delta = q * scale.float()[..., None] + minimum.float()[..., None] - wg  # (N, G, gs)
            err = torch.einsum("ngi,gij,ngj->ng", delta, blocks, delta)  # (N, G)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale, best_min = torch.where(better, scale, best_scale), torch.where(better, minimum, best_min)
    codes = int4_codes(wg, best_scale[..., None], best_min[..., None]).reshape(n, k)
    return codes, best_scale, best_min


def _scale_previous_(model: nn.Module, fqn: str, s: Tensor) -> None:
    """Divide the output channels of ``fqn`` (an RMSNorm's weight, or a Linear's rows and bias) by ``s``."""
    module = model.get_submodule(fqn)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.shape[0] != s.shape[0]:
        raise UnsupportedModuleError(f"AWQ cannot fold its scales into {fqn} ({type(module).__name__}); use method: gptq.")
    weight.data.div_(s.view(-1, *[1] * (weight.dim() - 1)))
    bias = bias_of(module) if isinstance(module, nn.Linear) else None
    if bias is not None:
        bias.data.div_(s)


@torch.no_grad()
def apply_scales_(model: nn.Module, groups: list[ScaleGroup], quantized: set[str], hessians: dict[str, Tensor],
                  abs_means: dict[str, Tensor], group_size: int) -> dict[str, float]:
    """Search and fold the AWQ scale of each group with a layer to quantize, in place (the float function is kept).

    ``hessians`` of the scaled layers' inputs are updated to the scaled inputs ``x / s``.

    Returns:
        ``{previous fqn: α}`` of each scaled group.
    """
    alphas = {}
    for group in groups:
        chosen = [fqn for fqn in group.linears if fqn in quantized]
        if not chosen:
            continue
        stacked = torch.cat([linear_at(model, fqn).weight.detach().float() for fqn in chosen])  # (ΣN, K)
        h = hessians[group.linears[0]]
        s, alphas[group.previous], ratio = search_scale(stacked, h, abs_means[group.linears[0]], group_size)
        log.debug("AWQ %s: alpha %.2f, output error x%.3f of unscaled rounding", group.previous, alphas[group.previous], ratio)
        _scale_previous_(model, group.previous, s)
        for fqn in group.linears:  # every reader, quantized or not, so the float function is unchanged
            linear_at(model, fqn).weight.data.mul_(s)
            hessians[fqn] = h / (s[:, None] * s[None, :])
    return alphas


@torch.no_grad()
def awq_(model: nn.Module, fqns: list[str], batches: list[Batch], group_size: int) -> dict[str, float]:
    """Scale, clip and replace the named Linear layers by int4 :class:`WeightOnlyLinear`, in place.

    Returns:
        ``{fqn: relative output error}``: ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` of each quantized layer on the
        calibration inputs (the measure :func:`~slimtorch.quantize.gptq.gptq_` reports).

    Raises:
        UnsupportedModuleError: the model has no LLaMA-style decoder layers to scale.
    """
    groups = llama_scale_groups(model)
    if not groups:
        raise UnsupportedModuleError(f"AWQ folds its scales into the norms and projections of LLaMA-style decoder layers "
                                     f"(input_layernorm -> q/k/v_proj, ...); {type(model).__name__} has none. Use method: gptq.")
    readers = sorted({fqn for group in groups for fqn in group.linears} | set(fqns))
    hessians, abs_means = input_statistics(model, readers, batches)
    apply_scales_(model, groups, set(fqns), hessians, abs_means, group_size)
    errors = {}
    for fqn in fqns:
        linear = linear_at(model, fqn)
        w, h = linear.weight.detach().float(), hessians[fqn]
        codes, scale, minimum = clipped_int4(w, h, group_size, clip=not fqn.endswith(UNCLIPPED))
        bias = bias_of(linear)
        out = WeightOnlyLinear(linear.in_features, linear.out_features, 4, group_size, bias is not None)
        if bias is not None and out.bias is not None:  # out has a bias exactly when linear has one
            out.bias.copy_(bias.detach().float())
        out.set_int4_(codes, scale, minimum)
        errors[fqn] = round(output_error(out.dequantized_weight() - w, h) / max(output_error(w, h), 1e-12), 6)
        set_submodule(model, fqn, out)
    return errors

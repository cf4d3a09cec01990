"""Weight masks at every granularity, kept on the model through ``torch.nn.utils.parametrize``.

A masked layer computes with ``weight = original * mask``; the gradient of a masked weight is zero
and the original is zeroed when masked, so any later training (finetune, distill, LoRA) keeps the
sparsity without hooks. :func:`bake_masks_` folds the masks into plain weights.

Granularities (groups of weights that are kept or removed together), for a weight of shape
``(O, I, *k)`` (Linear: ``(O, I)``):

- ``weight``: single weights (0-D);
- ``vector``: conv kernel rows ``W[o, i, h, :]``; Linear blocks of ``vector_size`` inputs (1-D);
- ``kernel``: whole conv kernels ``W[o, i]`` (2-D); not defined for Linear;
- ``"N:M"``: N weights kept in each run of M consecutive inputs (conv: along input channels).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimtorch.prune.config import parse_nm


class Mask(nn.Module):
    """Parametrization ``weight = original * mask``; ``mask`` is a 0/1 buffer of the weight's shape."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def weight_of(module: nn.Module) -> Tensor:
    """``module.weight``, masked if it is (torch types a module's attributes as ``Tensor | Module``)."""
    return cast(Tensor, module.weight)


def _weight_parametrizations(module: nn.Module) -> parametrize.ParametrizationList:
    """The parametrizations of a parametrized ``module.weight``; its ``original`` is the trainable tensor."""
    return cast(parametrize.ParametrizationList, module.get_submodule("parametrizations.weight"))


def mask_of(module: nn.Module) -> Tensor | None:
    """The current 0/1 mask of ``module.weight``, or ``None`` when it is not masked."""
    if parametrize.is_parametrized(module, "weight"):
        for p in _weight_parametrizations(module):
            if isinstance(p, Mask):
                return p.mask
    return None


def raw_weight(module: nn.Module) -> nn.Parameter:
    """The trainable tensor behind ``module.weight`` (the parametrization's original, if masked)."""
    if parametrize.is_parametrized(module, "weight"):
        return cast(nn.Parameter, _weight_parametrizations(module).original)
    return cast(nn.Parameter, module.weight)


def masks_from_zeros(model: nn.Module, fqns: list[str] | None = None) -> dict[str, Tensor]:
    """0/1 masks read off the weights that are exactly zero, for ``fqns`` (default: every masked module).

    A saved or merged model stores masked weights as plain zeros; this recovers the masks so later
    training keeps them (see :func:`rearm_masks_`).
    """
    modules = dict(model.named_modules())
    names = fqns if fqns is not None else [f for f, m in modules.items() if parametrize.is_parametrized(m, "weight")]
    return {f: (weight_of(modules[f]).detach() != 0).to(weight_of(modules[f]).dtype) for f in names}


def rearm_masks_(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """Put ``masks`` (fqn -> 0/1 tensor) back on ``model`` as pruning parametrizations, in place."""
    for fqn, mask in masks.items():
        set_mask_(model.get_submodule(fqn), mask)
    return model


def set_mask_(module: nn.Module, mask: Tensor) -> None:
    """Mask ``module.weight`` with ``mask`` (replacing any earlier mask) and zero the removed originals."""
    # contiguous: a broadcast (expanded) mask would share memory and break load_state_dict/copy_
    weight = weight_of(module)
    mask = mask.to(dtype=weight.dtype, device=weight.device).contiguous()
    current = mask_of(module)
    if current is None:
        parametrize.register_parametrization(module, "weight", Mask(mask))
    else:
        current.copy_(mask)
    with torch.no_grad():
        raw_weight(module).mul_(mask)


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {fqn: m for fqn, m in model.named_modules() if mask_of(m) is not None}


def bake_masks_(model: nn.Module) -> nn.Module:
    """Fold every mask into a plain ``weight`` (zeros stay); later training may then revive them."""
    for module in masked_modules(model).values():
        parametrizations = cast(nn.ModuleDict, module.parametrizations)
        if list(parametrizations.keys()) != ["weight"] or len(_weight_parametrizations(module)) != 1:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            continue
        # By hand rather than remove_parametrizations, which edits the parametrized class that a
        # deepcopy shares with its original (and so breaks the original).
        raw = raw_weight(module)
        weight = nn.Parameter(weight_of(module).detach().clone(), requires_grad=raw.requires_grad)
        del module._modules["parametrizations"]
        module.__class__ = module.__class__.__bases__[0]
        module.weight = weight
    return model


def weight_2d(module: nn.Module, weight: Tensor) -> Tensor:
    """``weight`` as ``(O, I, *k)``; transformers' ``Conv1D`` stores ``(I, O)``."""
    return weight.t() if type(module).__name__ == "Conv1D" else weight


def group_layout(module: nn.Module, granularity: str, vector_size: int = 4) -> str | None:
    """Why ``granularity`` cannot be applied to ``module`` (a reason), or ``None`` when it can."""
    w = weight_2d(module, weight_of(module))
    is_conv = w.dim() > 2
    nm = parse_nm(granularity)
    if nm is not None:
        if w.shape[1] % nm[1]:
            return f"{granularity} needs the input size ({w.shape[1]}) to be a multiple of {nm[1]}"
        return None
    if granularity == "kernel" and not is_conv:
        return "a Linear layer has no 2-D kernels (use granularity weight or vector)"
    if granularity == "vector" and not is_conv and w.shape[1] % vector_size:
        return f"vector granularity needs the input size ({w.shape[1]}) to be a multiple of vector_size={vector_size}"
    return None


def to_groups(module: nn.Module, t: Tensor, granularity: str, vector_size: int = 4) -> Tensor:
    """Reshape a weight-shaped tensor to ``(G, S)``: one row per group of ``S`` weights."""
    w = weight_2d(module, t)
    nm = parse_nm(granularity)
    if nm is not None:
        if w.dim() > 2:
            w = w.movedim(1, -1)  # (O, *k, I): runs of M along input channels
        return w.reshape(-1, nm[1])
    if granularity == "weight":
        return w.reshape(-1, 1)
    if granularity == "kernel":
        return w.reshape(w.shape[0] * w.shape[1], -1)  # (O*I, kh*kw)
    if granularity == "vector":
        return w.reshape(-1, w.shape[-1]) if w.dim() > 2 else w.reshape(-1, vector_size)
    raise ValueError(f"granularity {granularity!r} is not a mask granularity")


def from_groups(module: nn.Module, groups: Tensor, granularity: str) -> Tensor:
    """Inverse of :func:`to_groups`: ``(G, S)`` back to the weight's own shape and layout."""
    shape = weight_2d(module, weight_of(module)).shape
    if parse_nm(granularity) is not None and len(shape) > 2:
        moved = (shape[0], *shape[2:], shape[1])
        out = groups.reshape(moved).movedim(-1, 1)
    else:
        out = groups.reshape(shape)
    return out.t() if type(module).__name__ == "Conv1D" else out


def nm_mask(scores: Tensor, n: int) -> Tensor:
    """Keep the ``n`` highest scores of each row. scores (G, M) -> 0/1 mask (G, M)."""
    keep = scores.topk(n, dim=1).indices
    return torch.zeros_like(scores).scatter_(1, keep, 1.0)


def compute_masks(
    scores: dict[str, Tensor],
    modules: dict[str, nn.Module],
    granularity: str,
    sparsity: float | dict[str, float],
    scope: str = "layer",
    vector_size: int = 4,
) -> dict[str, Tensor]:
    """Masks removing exactly the lowest-scored groups.

    Args:
        scores: fqn -> weight-shaped importance (higher = keep); ``-inf`` marks already-removed weights.
        sparsity: one fraction for all layers, or fqn -> fraction (``scope`` then is per layer).
        scope: ``layer`` removes ``round(s * G)`` groups in each layer; ``global`` ranks all groups of all
            layers together and removes the lowest until ``s`` of all weights are gone.

    Returns:
        fqn -> 0/1 mask of the weight's shape.
    """
    nm = parse_nm(granularity)
    grouped = {f: to_groups(modules[f], s.float(), granularity, vector_size) for f, s in scores.items()}
    if nm is not None:
        return {f: from_groups(modules[f], nm_mask(g, nm[0]), granularity) for f, g in grouped.items()}
    group_scores = {f: g.sum(1) for f, g in grouped.items()}  # (G,)
    keep: dict[str, Tensor] = {}
    if scope == "global" and not isinstance(sparsity, dict):
        names = list(group_scores)
        flat = torch.cat([group_scores[f] for f in names])
        sizes = torch.cat([torch.full_like(group_scores[f], grouped[f].shape[1]) for f in names])
        order = torch.argsort(flat, stable=True)
        removed_weights = torch.cumsum(sizes[order], 0)
        target = float(round(sparsity * float(sizes.sum())))
        n_remove = int(torch.searchsorted(removed_weights, torch.tensor(target, device=removed_weights.device), right=True))
        flat_keep = torch.ones_like(flat)
        flat_keep[order[:n_remove]] = 0
        for f, part in zip(names, flat_keep.split([len(group_scores[f]) for f in names])):
            keep[f] = part
    else:
        for f, g in group_scores.items():
            s = sparsity[f] if isinstance(sparsity, dict) else sparsity
            k = round(s * len(g))
            keep[f] = torch.ones_like(g)
            keep[f][torch.argsort(g, stable=True)[:k]] = 0
    return {f: from_groups(modules[f], keep[f][:, None].expand_as(grouped[f]), granularity) for f in grouped}


def sparsity_report(modules: dict[str, nn.Module]) -> dict[str, float]:
    """fqn -> fraction of zeros in the effective weight."""
    return {f: float((weight_of(m) == 0).float().mean()) for f, m in modules.items()}

"""Recovery that reaches the shipped file: token distillation of a causal LM whose matrices compute in their GGUF blocks.

Each layer matrix the file will store as a block type (``q4_k``, ``q5_0``, ... by the export's tensor plan) is
replaced, while the student trains, by its weights rounded on that type's stored grid
(:func:`slimtorch.quantize.ggml_blocks.block_grid`: super-blocks of 256 with 6-bit sub-block scales for the
K-quants, blocks of 32 with an fp16 scale for the others), the gradient passing straight through the rounding
(Bengio et al. 2013, https://arxiv.org/abs/1308.3432). The loss is the distill stage's token-level KD from the
original (:mod:`slimtorch.distill.token_hop`).

Two starts:

- **From round to nearest** (``method: rtn``): the grid is re-chosen every ``GRID_EVERY`` forward passes (choosing it
  searches 20 ranges per group: ~25 s for SmolLM2-135M on 2 cores), the writer chooses it once more from the trained
  weights, and the record says how many codes that last choice moved.
- **From fixed codes** (``method: gptq``, or any LoRA recovery): every matrix's grid is chosen once from the original
  weights, the weights are set to their start codes on it (GPTQ's, or rounding's), and the grid stays fixed through
  training and writing, so the file holds exactly the rounding the model was trained through.

With ``lora``, only low-rank adapters train (Hu et al. 2021, https://arxiv.org/abs/2106.09685) on the decoder's
matrices, the rounded base frozen. ``through_rounding`` computes each matrix as ``round(W + s·B·A)`` on its fixed grid
(straight-through, as QA-LoRA does for its groups: https://arxiv.org/abs/2309.14717), so merging is exact; otherwise
peft's adapter sits beside the frozen rounded weights (QLoRA: https://arxiv.org/abs/2305.14314) and is merged and
re-quantized afterwards, which keeps only the part of ``s·B·A`` that moves a weight across a rounding boundary: the
record gives the held-out KL with the adapter and as shipped.

The token table trains in its own type too in a full recovery (q8_0 or q6_k in a 4-bit file); a tied output layer
computes with the same rounded table, both parametrizations sharing the one weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimtorch.distill.freeze import frozen
from slimtorch.distill.token_hop import TokenHopResult, heldout_kl, train_token_hop
from slimtorch.export.config import LORA_LR, RecoverLora
from slimtorch.lora import _peft
from slimtorch.quantize.ggml_blocks import BlockGrid, block_grid, gptq_codes

if TYPE_CHECKING:
    from slimtorch.core import RunContext
    from slimtorch.export.config import RecoverConfig

# Forward passes between two choices of a matrix's grid (ranges); between them the codes follow the weights on a fixed grid.
GRID_EVERY = 64

Matrices = dict[str, tuple[nn.Module, str]]  # gguf tensor name -> (Linear/Embedding, block type)


class GGUFFakeQuant(nn.Module):
    """Parametrization ``W → W + (Q(W) − W).detach()``: ``Q`` rounds to nearest on the block grid of ``qtype``, re-chosen
    every ``every`` calls, or the fixed ``grid`` when given."""

    def __init__(self, qtype: str, importance: Tensor | None = None, every: int = GRID_EVERY, grid: BlockGrid | None = None) -> None:
        super().__init__()
        self.qtype, self.importance, self.every = qtype, importance, every
        self.grid, self.fixed = grid, grid is not None
        self.calls = 0

    def choose_grid(self, weight: Tensor) -> BlockGrid:
        self.grid = block_grid(weight.detach(), self.qtype, self.importance)
        return self.grid

    def forward(self, weight: Tensor) -> Tensor:
        grid = self.grid
        if grid is None or not (self.fixed or self.calls % self.every):
            grid = self.choose_grid(weight)
        self.calls += 1
        with torch.no_grad():
            rounded = grid.dequantize(grid.codes(weight.detach().float())).to(weight.dtype)
        return weight + (rounded - weight).detach()


class LowRankUpdate(nn.Module):
    """Parametrization ``W → W + (lora_alpha / rank)·B·A``: LoRA's update, ``B`` zero at the start (as peft initializes it)."""

    def __init__(self, out_features: int, in_features: int, rank: int, lora_alpha: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = lora_alpha / rank

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.scaling * (self.lora_B @ self.lora_A).to(weight.dtype)


@dataclass
class FakeQuantFacts:
    """What the run learned about the rounding: matrices trained in their blocks, the start, and the codes that moved."""

    matrices: int
    types: dict[str, int]
    codes_moved_at_write: float  # fraction of weights whose code changed when the writer chose its grid (0 on a fixed grid)
    start: str = "rtn"  # the codes training started from: rtn (grid re-chosen while training) or gptq / rtn_fixed
    codes_moved_from_start: float | None = None  # fixed grid: fraction of weights whose code differs from the start's
    heldout_kl_shipped: float | None = None  # fixed grid: held-out KL to the original of the weights as written
    lora: dict[str, Any] | None = field(default=None)
    rejected_kl: float | None = None  # fixed grid: the trained weights' held-out KL when it was worse than the start's (start written)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"matrices": self.matrices, "types": self.types,
                               "codes_moved_at_write": round(self.codes_moved_at_write, 6), "start": self.start}
        if self.codes_moved_from_start is not None:
            out["codes_moved_from_start"] = round(self.codes_moved_from_start, 6)
        if self.heldout_kl_shipped is not None:
            out["heldout_kl_shipped"] = round(self.heldout_kl_shipped, 6)
        if self.lora is not None:
            out["lora"] = self.lora
        if self.rejected_kl is not None:
            out["rejected_kl"] = round(self.rejected_kl, 6)
        return out


@contextmanager
def fake_quantized(modules: Matrices, hessians: dict[str, Tensor] | None,
                   grids: dict[str, BlockGrid] | None = None) -> Iterator[list[GGUFFakeQuant]]:
    """Every ``{gguf name: (Linear, block type)}`` computes with its rounded weight inside (on ``grids[name]`` when given);
    plain float weights after."""
    added: list[tuple[nn.Module, GGUFFakeQuant]] = []
    try:
        for name, (module, qtype) in modules.items():
            hessian = (hessians or {}).get(name)
            fake = GGUFFakeQuant(qtype, None if hessian is None else torch.diag(hessian), grid=(grids or {}).get(name))
            parametrize.register_parametrization(module, "weight", fake)
            added.append((module, fake))
        yield [fake for _, fake in added]
    finally:
        for module, _ in added:
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)  # the trained float weights


def parametrize_original(module: nn.Module) -> Tensor:
    """The float weight under a module's weight parametrization."""
    original = module.parametrizations["weight"].original  # type: ignore[union-attr,index]
    assert isinstance(original, Tensor)
    return original.detach().float()


def _codes_moved(fakes: list[GGUFFakeQuant], modules: list[nn.Module]) -> float:
    """Fraction of weights whose code differs between the training's last grid and the writer's choice of grid."""
    moved = total = 0
    with torch.no_grad():
        for fake, module in zip(fakes, modules):
            weight = parametrize_original(module)
            trained = fake.grid if fake.grid is not None else fake.choose_grid(weight)
            written = block_grid(weight, fake.qtype, fake.importance)
            moved += int((written.codes(weight) != trained.codes(weight)).sum())
            total += weight.numel()
    return moved / max(total, 1)


# --- a fixed grid: start codes, and the codes written ------------------------------------------------


def weight_of(module: nn.Module) -> Tensor:
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


def _distinct(matrices: Matrices) -> Iterator[tuple[str, Tensor, str, str]]:
    """``(name, weight, block type, name of the first matrix with this weight)``: a tied output layer names the table."""
    first: dict[int, str] = {}
    for name, (module, qtype) in matrices.items():
        weight = weight_of(module)
        yield name, weight, qtype, first.setdefault(id(weight), name)


@torch.no_grad()
def start_on_grids(matrices: Matrices, hessians: dict[str, Tensor] | None, method: str) -> tuple[dict[str, BlockGrid], dict[str, Tensor]]:
    """Every matrix's grid, chosen once from its weights (``diag(H)`` as importance), and its start codes on it (GPTQ's
    with ``method: gptq`` and a Hessian, else rounding's); the weights are set to those codes, in place.

    Returns:
        The grids and the start codes (uint8) by gguf tensor name; a tied output layer shares the table's.
    """
    grids: dict[str, BlockGrid] = {}
    codes: dict[str, Tensor] = {}
    for name, param, qtype, owner in _distinct(matrices):
        if owner != name:
            grids[name], codes[name] = grids[owner], codes[owner]
            continue
        weight = param.detach().float()
        hessian = (hessians or {}).get(name)
        grid = block_grid(weight, qtype, None if hessian is None else torch.diag(hessian))
        start = gptq_codes(weight, hessian, grid) if method == "gptq" and hessian is not None else grid.codes(weight)
        param.copy_(grid.dequantize(start).to(param.dtype))
        grids[name], codes[name] = grid, start.to(torch.uint8)
    return grids, codes


@torch.no_grad()
def round_onto_grids_(matrices: Matrices, grids: dict[str, BlockGrid], start: dict[str, Tensor],
                      hessians: dict[str, Tensor] | None = None, use_gptq: bool = False) -> float:
    """Set every matrix's weights to their codes on its fixed grid (round to nearest, or GPTQ's with ``use_gptq``), in
    place, so the writer, rounding on the same grids, writes these codes; returns the fraction that moved from ``start``."""
    moved = total = 0
    for name, param, _, owner in _distinct(matrices):
        if owner != name:
            continue
        weight, grid, hessian = param.detach().float(), grids[name], (hessians or {}).get(name)
        codes = gptq_codes(weight, hessian, grid) if use_gptq and hessian is not None else grid.codes(weight)
        param.copy_(grid.dequantize(codes).to(param.dtype))
        moved += int((codes.to(torch.uint8) != start[name]).sum())
        total += weight.numel()
    return moved / max(total, 1)


def adapted(matrices: Matrices) -> Matrices:
    """The matrices LoRA adapts: the decoder blocks' (the token table and the output layer keep their start codes)."""
    return {name: (module, qtype) for name, (module, qtype) in matrices.items() if name.startswith("blk.") and isinstance(module, nn.Linear)}


def non_adapter_names(model: nn.Module) -> list[str]:
    """Every parameter of ``model`` but the LoRA adapters' (``lora_A``/``lora_B``): what a LoRA recovery keeps frozen."""
    return [n for n, _ in model.named_parameters() if not {"lora_A", "lora_B"} & set(n.split("."))]


@contextmanager
def low_rank_through_rounding(matrices: Matrices, grids: dict[str, BlockGrid], lora: RecoverLora) -> Iterator[int]:
    """Each adapted matrix computes ``round(W + s·B·A)`` on its fixed grid, ``W`` frozen; yields the adapter parameters.
    On exit the weights are ``round(W + s·B·A)``: the merge is the rounding that trained."""
    added = []
    try:
        for name, (module, qtype) in adapted(matrices).items():
            out_features, in_features = weight_of(module).shape
            parametrize.register_parametrization(module, "weight", LowRankUpdate(out_features, in_features, lora.rank, lora.lora_alpha))
            parametrize.register_parametrization(module, "weight", GGUFFakeQuant(qtype, grid=grids[name]))
            added.append(module)
        yield sum(p.numel() for m in added for n, p in m.named_parameters() if "lora_" in n)
    finally:
        for module in added:
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


# --- the recovery ---------------------------------------------------------------------------------


def _train(lm: nn.Module, teacher: nn.Module, config: RecoverConfig, ctx: RunContext) -> TokenHopResult:
    return train_token_hop(lm, [teacher], [1.0], ctx.data, config, ctx, description="recover in GGUF blocks",
                           checkpoint_dir=ctx.stage_dir("export") / "recover")


def _lora(lm: nn.Module, matrices: Matrices, grids: dict[str, BlockGrid], teacher: nn.Module, config: RecoverConfig,
          ctx: RunContext) -> tuple[TokenHopResult, dict[str, Any]]:
    """Train LoRA adapters on the rounded decoder matrices and merge them (through the rounding, or beside it)."""
    lora = config.lora
    assert lora is not None
    if config.lr is None:
        config = config.model_copy(update={"lr": LORA_LR})
    facts: dict[str, Any] = {"rank": lora.rank, "lora_alpha": lora.lora_alpha, "through_rounding": lora.through_rounding,
                             "matrices": len(adapted(matrices)), "lr": config.lr}
    if lora.through_rounding:
        with low_rank_through_rounding(matrices, grids, lora) as trainable, frozen(lm, non_adapter_names(lm)):
            hop = _train(lm, teacher, config, ctx)
        return hop, {**facts, "trainable_params": trainable, "backend": "torch parametrizations (round(W + s·B·A))"}
    hf = getattr(lm, "hf", lm)
    fqns = {id(m): fqn for fqn, m in hf.named_modules()}
    was = {p: p.requires_grad for p in lm.parameters()}  # peft freezes the base layers as it injects the adapters
    trainable = _peft.inject_lora_(hf, [fqns[id(m)] for m, _ in adapted(matrices).values()], lora.rank, lora.lora_alpha)
    try:
        with frozen(lm, non_adapter_names(lm)):
            hop = _train(lm, teacher, config, ctx)
    finally:
        _peft.merge_injected_(hf)  # the base layers (the matrices' own modules) back in place, W + s·B·A in float
        for p, flag in was.items():
            p.requires_grad_(flag)
    return hop, {**facts, "trainable_params": trainable, "backend": f"peft {_peft._peft().__version__} LoRA beside the rounded "
                                                                    "weights, merged and re-quantized",
                 "heldout_kl_with_adapter": round(hop.heldout_kl_after, 6)}


def recover_in_blocks(lm: nn.Module, matrices: Matrices, hessians: dict[str, Tensor] | None, teacher: nn.Module,
                      config: RecoverConfig, ctx: RunContext, method: str = "rtn") -> tuple[FakeQuantFacts, dict[str, Any], dict[str, BlockGrid] | None]:
    """Token-distil ``lm`` (the :class:`~slimtorch.models.hf.HFModel` being written) from ``teacher`` with ``matrices`` in their
    GGUF blocks (in place; best held-out KL kept), starting from ``method``'s codes (rtn or gptq).

    Returns:
        The rounding facts, the token hop's details (tokens seen, held-out KL before and after, loss), and the grids the
        writer must round on (None when it chooses them again: a full recovery from round to nearest).
    """
    types: dict[str, int] = {}
    for _, qtype in matrices.values():
        types[qtype] = types.get(qtype, 0) + 1
    if config.lora is None and method == "rtn":
        with fake_quantized(matrices, hessians) as fakes:
            hop = _train(lm, teacher, config, ctx)
            moved = _codes_moved(fakes, [module for module, _ in matrices.values()])
        return FakeQuantFacts(len(matrices), types, moved), _hop_details(hop), None
    grids, start = start_on_grids(matrices, hessians, method)
    lora_facts = None
    if config.lora is None:
        with fake_quantized(matrices, hessians, grids):
            hop = _train(lm, teacher, config, ctx)
    else:
        hop, lora_facts = _lora(lm, matrices, grids, teacher, config, ctx)
    # GPTQ re-solves a merged adapter's codes on the grid; a model trained through the rounding keeps round to nearest.
    requantize_by_gptq = config.lora is not None and not config.lora.through_rounding and method == "gptq"
    moved = round_onto_grids_(matrices, grids, start, hessians, requantize_by_gptq)
    shipped = heldout_kl(lm, [teacher], [1.0], hop.heldout)
    facts = FakeQuantFacts(len(matrices), types, 0.0, method if method == "gptq" else "rtn_fixed", moved, shipped, lora_facts)
    if shipped > hop.heldout_kl_before:  # never ship a file the recovery made worse than its start codes
        facts.rejected_kl, facts.codes_moved_from_start, facts.heldout_kl_shipped = shipped, 0.0, hop.heldout_kl_before
        _restore_start_(matrices, grids, start)
    return facts, _hop_details(hop), grids


@torch.no_grad()
def _restore_start_(matrices: Matrices, grids: dict[str, BlockGrid], start: dict[str, Tensor]) -> None:
    for name, param, _, owner in _distinct(matrices):
        if owner == name:
            param.copy_(grids[name].dequantize(start[name].float()).to(param.dtype))


def _hop_details(hop: TokenHopResult) -> dict[str, Any]:
    return {**hop.details(), **hop.fit.summary(), "val_kl_to_teacher": round(-hop.fit.best_metric, 6)}

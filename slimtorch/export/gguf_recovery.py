"""Recovery that reaches the shipped file: token distillation of a causal LM whose matrices compute in their GGUF blocks.

Each layer matrix the file will store as a block type (``q4_k``, ``q5_0``, ... by the export's tensor plan) is
replaced, while the student trains, by its weights rounded on that type's stored grid
(:func:`slimtorch.quantize.ggml_blocks.block_grid`: super-blocks of 256 with 6-bit sub-block scales for the
K-quants, blocks of 32 with an fp16 scale for the others), the gradient passing straight through the rounding
(Bengio et al. 2013, https://arxiv.org/abs/1308.3432). The loss is the distill stage's token-level KD from the
original (:mod:`slimtorch.distill.token_hop`). The writer then rounds the trained weights to nearest on a grid
chosen the same way, so the rounding the student learned to live with is the rounding the file holds; the grid is
re-chosen every ``GRID_EVERY`` forward passes (choosing it searches 20 ranges per group: ~25 s for SmolLM2-135M on 2 cores),
and the stage record says how many codes the final choice moved.

The token table trains in its own type too (q8_0 or q6_k in a 4-bit file); a tied output layer computes with the same
rounded table, both parametrizations sharing the one weight.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimtorch.distill.token_hop import train_token_hop
from slimtorch.quantize.ggml_blocks import BlockGrid, block_grid

if TYPE_CHECKING:
    from slimtorch.core import RunContext
    from slimtorch.distill.config import DistillConfig

# Forward passes between two choices of a matrix's grid (ranges); between them the codes follow the weights on a fixed grid.
GRID_EVERY = 64


class GGUFFakeQuant(nn.Module):
    """Parametrization ``W → W + (Q(W) − W).detach()``: ``Q`` rounds to nearest on the block grid of ``qtype``."""

    def __init__(self, qtype: str, importance: Tensor | None = None, every: int = GRID_EVERY) -> None:
        super().__init__()
        self.qtype, self.importance, self.every = qtype, importance, every
        self.grid: BlockGrid | None = None
        self.calls = 0

    def choose_grid(self, weight: Tensor) -> BlockGrid:
        self.grid = block_grid(weight.detach(), self.qtype, self.importance)
        return self.grid

    def forward(self, weight: Tensor) -> Tensor:
        grid = self.grid if self.grid is not None and self.calls % self.every else self.choose_grid(weight)
        self.calls += 1
        with torch.no_grad():
            rounded = grid.dequantize(grid.codes(weight.detach().float())).to(weight.dtype)
        return weight + (rounded - weight).detach()


@dataclass
class FakeQuantFacts:
    """What the run learned about the rounding: matrices trained in their blocks, and codes the last grid choice moved."""

    matrices: int
    types: dict[str, int]
    codes_moved_at_write: float  # fraction of weights whose code changed when the writer chose its grid

    def to_json(self) -> dict[str, Any]:
        return {"matrices": self.matrices, "types": self.types, "codes_moved_at_write": round(self.codes_moved_at_write, 6)}


@contextmanager
def fake_quantized(modules: dict[str, tuple[nn.Module, str]], hessians: dict[str, Tensor] | None) -> Iterator[list[GGUFFakeQuant]]:
    """Every ``{gguf name: (Linear, block type)}`` computes with its rounded weight inside; plain float weights after."""
    added: list[tuple[nn.Module, GGUFFakeQuant]] = []
    try:
        for name, (module, qtype) in modules.items():
            hessian = (hessians or {}).get(name)
            fake = GGUFFakeQuant(qtype, None if hessian is None else torch.diag(hessian))
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


def recover_in_blocks(lm: nn.Module, matrices: dict[str, tuple[nn.Module, str]], hessians: dict[str, Tensor] | None,
                      teacher: nn.Module, config: DistillConfig, ctx: RunContext) -> tuple[FakeQuantFacts, dict[str, Any]]:
    """Token-distil ``lm`` (the :class:`~slimtorch.models.hf.HFModel` being written) from ``teacher`` with ``matrices`` in their GGUF blocks (in place; best held-out KL kept).

    Returns:
        The rounding facts and the token hop's details (tokens seen, held-out KL before and after, loss).
    """
    types: dict[str, int] = {}
    for _, qtype in matrices.values():
        types[qtype] = types.get(qtype, 0) + 1
    with fake_quantized(matrices, hessians) as fakes:
        hop = train_token_hop(lm, [teacher], [1.0], ctx.data, config, ctx, description="recover in GGUF blocks",
                              checkpoint_dir=ctx.stage_dir("export") / "recover")
        moved = _codes_moved(fakes, [module for module, _ in matrices.values()])
    details = {**hop.details(), **hop.fit.summary(), "val_kl_to_teacher": round(-hop.fit.best_metric, 6)}
    return FakeQuantFacts(len(matrices), types, moved), details

"""Which GGML type each tensor of a GGUF file gets: llama.cpp's named mixes, or a size target met by measured sensitivity.

**Named mixes** follow llama.cpp's quantizer (``llama_tensor_get_type`` in ``src/llama-quant.cpp``), re-stated:
the output matrix (the token table when the output is tied to it) is Q6_K; with ``_M`` mixes ``attn_v`` and
``ffn_down`` of the first and last eighth of the layers and of every third layer between get Q6_K; every
other matrix gets the mix's base type. A K type needs rows that are a multiple of 256 weights; where they are
not, llama.cpp falls back Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0 (SmolLM2-135M's 576-wide rows: most tensors).

**A size target** (:func:`allocate`) starts every matrix at the cheapest candidate type and upgrades, one
step at a time, the matrix whose measured output error ``tr(ΔW H ΔWᵀ)`` (``H`` its calibration inputs'
``2XXᵀ/n``) falls most per extra byte, until the next upgrade would pass the budget (a greedy knapsack on
the error/size curve of each matrix).
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from typing import Literal

from slimtorch.errors import SizeTargetError
from slimtorch.quantize.ggml_blocks import BLOCK_TYPES, QK_K, block_type

MixName = Literal["q4_k_m", "q5_k_m"]
MIXES: dict[str, str] = {"q4_k_m": "q4_k", "q5_k_m": "q5_k"}
K_FALLBACK = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}
# Candidate types of the size target, cheapest first: K types where rows allow, else the blocks of 32.
K_CANDIDATES = ("q4_k", "q5_k", "q6_k", "q8_0")
LEGACY_CANDIDATES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's rule for the ``_M`` mixes: layer ``i`` of ``n`` gets more bits."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def with_fallback(qtype: str, columns: int) -> str:
    """``qtype``, or llama.cpp's fallback when rows of ``columns`` weights are no multiple of its block."""
    while columns % block_type(qtype).block:
        qtype = K_FALLBACK.get(qtype, "")
        if not qtype:
            return "f16"
    return qtype


def _layer(name: str) -> int | None:
    match = re.match(r"blk\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def mix_plan(quant: str, columns: dict[str, int], n_layers: int, table: str | None = None) -> dict[str, str]:
    """The type of every matrix (``columns``: gguf tensor name → row length) for a file of ``quant`` (a type or a mix).

    Args:
        table: the token table / output type to use instead of llama.cpp's choice (Q6_K, or Q8_0 by fallback).
    """
    base = MIXES.get(quant, quant)
    is_mix = quant in MIXES
    has_output = "output" in columns
    plan = {}
    for name, cols in columns.items():
        qtype = base
        is_output = name == "output" or (name == "token_embd" and not has_output)
        layer = _layer(name)
        if is_output:
            qtype = table or (base if base in ("q8_0", "f16", "f32") else "q6_k")
        elif name == "token_embd" and table:
            qtype = table
        elif is_mix and layer is not None and name.endswith(("attn_v", "ffn_down")) and use_more_bits(layer, n_layers):
            qtype = "q6_k"
        plan[name] = qtype if qtype in ("f16", "f32") else with_fallback(qtype, cols)
    return plan


def candidates(columns: int) -> tuple[str, ...]:
    return K_CANDIDATES if columns % QK_K == 0 else LEGACY_CANDIDATES


@dataclass
class SizePlan:
    """The outcome of :func:`allocate`: a type per matrix and what it costs."""

    types: dict[str, str]
    bytes_by_tensor: dict[str, int]
    error_by_tensor: dict[str, float]
    weights: int
    budget_bytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(self.bytes_by_tensor.values())

    @property
    def bits_per_weight(self) -> float:
        return self.bytes * 8 / max(self.weights, 1)

    def summary(self) -> dict[str, object]:
        count: dict[str, int] = {}
        for t in self.types.values():
            count[t] = count.get(t, 0) + 1
        return {"bits_per_weight": round(self.bits_per_weight, 4), "matrix_bytes": self.bytes, "budget_bytes": self.budget_bytes,
                "tensors_by_type": dict(sorted(count.items())), "types": self.types}


def tensor_bytes(qtype: str, rows: int, columns: int) -> int:
    if qtype in ("f16", "f32"):
        return rows * columns * (2 if qtype == "f16" else 4)
    t = BLOCK_TYPES[qtype]
    return rows * columns // t.block * t.block_bytes


def allocate(errors: dict[str, dict[str, float]], shapes: dict[str, tuple[int, int]], budget_bytes: int,
             fixed: dict[str, str] | None = None) -> SizePlan:
    """Types for the matrices of ``errors`` (name → {type: output error}) within ``budget_bytes`` for all matrices.

    ``fixed`` matrices keep their type (their bytes count against the budget). Raises ``ValueError`` when even the
    cheapest types do not fit (a :class:`~slimtorch.errors.SizeTargetError`).
    """
    fixed = fixed or {}
    options = {name: sorted(errs, key=lambda t: tensor_bytes(t, *shapes[name])) for name, errs in errors.items()}
    choice = {name: opts[0] for name, opts in options.items()}
    size = {name: tensor_bytes(t, *shapes[name]) for name, t in {**choice, **fixed}.items()}
    total = sum(size.values())
    weights = sum(r * c for r, c in shapes.values())
    if total > budget_bytes:
        raise SizeTargetError(f"the size target allows {budget_bytes / 1e6:.2f} MB for the weight matrices, but the cheapest types "
                         f"need {total / 1e6:.2f} MB ({total * 8 / weights:.2f} bits per weight); raise the target.")

    def best_step(name: str) -> tuple[float, str] | None:
        now = choice[name]
        e0, b0 = errors[name][now], size[name]
        steps = [((e0 - errors[name][t]) / (tensor_bytes(t, *shapes[name]) - b0), t) for t in options[name]
                 if tensor_bytes(t, *shapes[name]) > b0 and errors[name][t] < e0]
        return max(steps) if steps else None

    heap: list[tuple[float, str, str]] = []
    for name in options:
        step = best_step(name)
        if step:
            heapq.heappush(heap, (-step[0], name, step[1]))
    while heap:
        _, name, qtype = heapq.heappop(heap)
        extra = tensor_bytes(qtype, *shapes[name]) - size[name]
        if total + extra > budget_bytes:
            continue  # this upgrade does not fit; cheaper upgrades of other matrices still may
        choice[name], size[name], total = qtype, size[name] + extra, total + extra
        step = best_step(name)
        if step:
            heapq.heappush(heap, (-step[0], name, step[1]))
    types = {**choice, **fixed}
    return SizePlan(types, size, {n: errors[n][t] for n, t in choice.items()}, weights, budget_bytes)

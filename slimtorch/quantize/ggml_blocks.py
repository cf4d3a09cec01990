"""llama.cpp's block formats (Q4_0 ... Q8_0, Q4_K, Q5_K, Q6_K) as grids that calibration solves for, and their bytes.

Every GGML type stores a weight row in blocks; inside a block each group of ``sub`` weights shares one
effective scale ``s`` and offset ``o``, and a weight is ``s · u + o`` for an integer code ``u`` in
``[0, 2^bits − 1]``. What differs is how ``s`` and ``o`` are themselves stored:

==========  =====  ====  =================================================================================
type        block  sub   stored grid (``u`` the unsigned code)
==========  =====  ====  =================================================================================
q4_0/q5_0   32     32    fp16 ``d``; ``w = d · (u − 8 | 16)``
q4_1/q5_1   32     32    fp16 ``d``, ``m``; ``w = d · u + m``
q8_0        32     32    fp16 ``d``; ``w = d · (u − 128)`` (int8 codes)
q4_k/q5_k   256    32    fp16 ``d``, ``dmin`` per 256; 6-bit ``sc``, ``m`` per 32; ``w = d·sc · u − dmin·m``
q6_k        256    16    fp16 ``d`` per 256; int8 ``sc`` per 16; ``w = d·sc · (u − 32)``
==========  =====  ====  =================================================================================

:func:`block_grid` picks each group's range (least ``diag(H)``-weighted squared error over shrunk ranges,
as llama.cpp's importance-weighted quantizers do) and then rounds it *as the file stores it* (fp16 super
scales, 6-bit or int8 sub-scales), so the ``(scale, offset)`` it returns are exactly the values llama.cpp
multiplies by. GPTQ (:func:`gptq_codes`) then chooses the codes on that grid, and :func:`pack` writes
codes and stored grid as the type's bytes, verified against the ``gguf`` package's dequantizer and
llama.cpp itself (tests). The layouts follow ggml's ``block_q4_K`` etc. (ggml-common.h).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

BlockTypeName = Literal["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k"]
QK_K = 256


@dataclass(frozen=True)
class BlockType:
    """One GGML block format: weights per block, weights per shared scale, code bits, bytes per block."""

    name: str
    block: int
    sub: int
    bits: int
    block_bytes: int
    symmetric: bool  # offset is −zero · scale (no stored minimum)

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    @property
    def zero(self) -> int:
        return 1 << (self.bits - 1)

    @property
    def bits_per_weight(self) -> float:
        return self.block_bytes * 8 / self.block

    @property
    def is_k(self) -> bool:
        return self.block == QK_K


BLOCK_TYPES: dict[str, BlockType] = {t.name: t for t in [
    BlockType("q4_0", 32, 32, 4, 18, True), BlockType("q4_1", 32, 32, 4, 20, False),
    BlockType("q5_0", 32, 32, 5, 22, True), BlockType("q5_1", 32, 32, 5, 24, False),
    BlockType("q8_0", 32, 32, 8, 34, True),
    BlockType("q4_k", QK_K, 32, 4, 144, False), BlockType("q5_k", QK_K, 32, 5, 176, False),
    BlockType("q6_k", QK_K, 16, 6, 210, True),
]}


def block_type(name: str) -> BlockType:
    try:
        return BLOCK_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown GGML block type {name!r}; known: {', '.join(sorted(BLOCK_TYPES))}") from None


def fits(qtype: BlockType, columns: int) -> bool:
    """Whether rows of ``columns`` weights split into whole blocks of ``qtype``."""
    return columns % qtype.block == 0


@dataclass
class BlockGrid:
    """A weight's grid as stored: effective ``scale``/``offset`` (N, K/sub) fp32, plus the stored pieces for :func:`pack`."""

    qtype: BlockType
    scale: Tensor
    offset: Tensor
    d: Tensor  # (N, K/block) fp16: the block's scale (K types: the super-block's)
    dmin: Tensor | None = None  # (N, K/block) fp16: q4_1/q5_1's minimum, or K types' super minimum scale
    sub_scale: Tensor | None = None  # K types: (N, K/sub) integer sub-scales (6-bit unsigned, or int8 for q6_k)
    sub_min: Tensor | None = None  # q4_k/q5_k: (N, K/sub) 6-bit minimum multipliers

    def codes(self, w: Tensor) -> Tensor:
        """Round-to-nearest codes ``(N, K)`` of ``w`` on this grid."""
        return codes_on(w, expand(self.scale, self.qtype.sub), expand(self.offset, self.qtype.sub), self.qtype.qmax)

    def dequantize(self, codes: Tensor) -> Tensor:
        return codes * expand(self.scale, self.qtype.sub) + expand(self.offset, self.qtype.sub)

    def map_rows(self, fn: Callable[[Tensor], Tensor]) -> BlockGrid:
        """This grid with every per-row tensor passed through ``fn`` (rows reordered with their weights: llama.cpp's
        query/key order)."""
        fields = ("scale", "offset", "d", "dmin", "sub_scale", "sub_min")
        moved: dict[str, Any] = {f: fn(getattr(self, f)) for f in fields if getattr(self, f) is not None}
        return dataclasses.replace(self, **moved)


def expand(per_group: Tensor, sub: int) -> Tensor:
    """(N, K/sub) → (N, K): each group's value repeated over its ``sub`` columns."""
    return per_group.repeat_interleave(sub, -1)


def codes_on(w: Tensor, scale: Tensor, offset: Tensor, qmax: int) -> Tensor:
    """Codes in ``[0, qmax]`` of ``w`` on ``scale · u + offset`` (a zero scale gives code 0)."""
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.where(scale == 0, torch.zeros_like(w), torch.round((w - offset) / safe).clamp(0, qmax))


def _fp16(x: Tensor) -> Tensor:
    return x.to(torch.float16).float()


def _group_ranges(w: Tensor, importance: Tensor, qtype: BlockType, steps: int, max_shrink: float) -> tuple[Tensor, Tensor]:
    """Per group of ``sub`` weights ``(scale, offset)`` (N, G) before the scales are stored: the shrink of the range with
    the least importance-weighted squared error."""
    n, k = w.shape
    g = w.reshape(n, k // qtype.sub, qtype.sub)  # (N, G, sub)
    imp = importance.reshape(1, k // qtype.sub, qtype.sub)
    lo, hi = g.amin(-1), g.amax(-1)
    if qtype.is_k and not qtype.symmetric:  # K types store the minimum as d_min · m with m ≥ 0: offset ≤ 0
        lo = lo.clamp(max=0)
    if qtype.symmetric:  # signed extreme at −zero, as ggml does, so its sign is spent where the range is
        big = torch.where(hi.abs() > lo.abs(), hi, lo)
    best = torch.full_like(lo, float("inf"))
    best_scale, best_offset = torch.zeros_like(lo), torch.zeros_like(lo)
    for i in range(steps + 1):
        p = 1 - max_shrink * i / steps
        if qtype.symmetric:
            scale = big * p / -qtype.zero
            offset = -qtype.zero * scale
        else:
            scale = (hi - lo) * p / qtype.qmax
            offset = lo * p
        u = codes_on(g, scale[..., None], offset[..., None], qtype.qmax)
        err = ((u * scale[..., None] + offset[..., None] - g) ** 2 * imp).sum(-1)
        better = err < best
        best = torch.where(better, err, best)
        best_scale, best_offset = torch.where(better, scale, best_scale), torch.where(better, offset, best_offset)
    return best_scale, best_offset


def block_grid(weight: Tensor, qtype: BlockType | str, importance: Tensor | None = None, steps: int = 20,
               max_shrink: float = 0.2) -> BlockGrid:
    """The stored grid of ``weight`` (N, K) in ``qtype``: ranges by least ``importance``-weighted error, rounded as stored.

    Args:
        importance: (K,) weight of each input column's error (``diag(H)``, llama.cpp's importance matrix); default 1.
    """
    qt = block_type(qtype) if isinstance(qtype, str) else qtype
    w = weight.detach().float()
    n, k = w.shape
    if k % qt.block:
        raise ValueError(f"{qt.name} stores rows in blocks of {qt.block}; this weight has {k} columns. Pick a type whose "
                         "block divides the row (the q*_0/q*_1 types use 32).")
    imp = torch.ones(k) if importance is None else importance.detach().float().clamp(min=0) + 1e-12
    scale, offset = _group_ranges(w, imp, qt, steps, max_shrink)  # (N, G)
    if not qt.is_k:
        d = scale.to(torch.float16)
        if qt.symmetric:
            return BlockGrid(qt, d.float(), -qt.zero * d.float(), d)
        m = offset.to(torch.float16)
        return BlockGrid(qt, d.float(), m.float(), d, m)
    per = QK_K // qt.sub
    sc = scale.reshape(n, k // QK_K, per)  # (N, nb, per)
    if qt.symmetric:  # q6_k: int8 sub-scales of one fp16 super-scale
        big = torch.where(sc.amax(-1).abs() > sc.amin(-1).abs(), sc.amax(-1), sc.amin(-1))  # (N, nb)
        d = (big / 127).to(torch.float16)
        isc = torch.round(sc / _safe(d.float())[..., None]).clamp(-128, 127)
        eff = d.float()[..., None] * isc
        return BlockGrid(qt, eff.reshape(n, -1), (-qt.zero * eff).reshape(n, -1), d, None, isc.reshape(n, -1))
    mins = (-offset).reshape(n, k // QK_K, per)  # ≥ 0
    d = (sc.amax(-1) / 63).to(torch.float16)
    dmin = (mins.amax(-1) / 63).to(torch.float16)
    isc = torch.round(sc / _safe(d.float())[..., None]).clamp(0, 63)
    imin = torch.round(mins / _safe(dmin.float())[..., None]).clamp(0, 63)
    eff_scale = d.float()[..., None] * isc
    eff_offset = -(dmin.float()[..., None] * imin)
    return BlockGrid(qt, eff_scale.reshape(n, -1), eff_offset.reshape(n, -1), d, dmin, isc.reshape(n, -1), imin.reshape(n, -1))


def _safe(x: Tensor) -> Tensor:
    return torch.where(x == 0, torch.ones_like(x), x)


# --- GPTQ on a block grid -------------------------------------------------------------------------


@torch.no_grad()
def gptq_codes(weight: Tensor, hessian: Tensor, grid: BlockGrid, damping: float = 0.01, block_size: int = 128) -> Tensor:
    """GPTQ codes ``(N, K)`` of ``weight`` on the fixed stored ``grid`` (columns by decreasing ``diag(H)``).

    As :func:`slimtorch.quantize.gptq.gptq_int4` with ``act_order`` and static groups, but each column's
    scale and offset are the type's effective ones (``grid``), so the rounding GPTQ optimizes is the one
    llama.cpp will dequantize.
    """
    w = weight.detach().float().clone()  # (N, K)
    n, k = w.shape
    h = hessian.detach().clone().float()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damping * torch.diag(h).mean() * torch.eye(k)
    perm = torch.argsort(torch.diag(h), descending=True)
    scale, offset = expand(grid.scale, grid.qtype.sub)[:, perm], expand(grid.offset, grid.qtype.sub)[:, perm]  # (N, K)
    w, h = w[:, perm], h[perm][:, perm]
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # (K, K)
    codes = torch.zeros(n, k)
    qmax = grid.qtype.qmax
    for start in range(0, k, block_size):
        end = min(start + block_size, k)
        block, block_hinv = w[:, start:end].clone(), hinv[start:end, start:end]  # (N, bs), (bs, bs)
        errors = torch.zeros_like(block)
        for j in range(end - start):
            s, o = scale[:, start + j], offset[:, start + j]  # (N,)
            q = codes_on(block[:, j], s, o, qmax)
            codes[:, start + j] = q
            err = (block[:, j] - (q * s + o)) / block_hinv[j, j]
            block[:, j:] -= err[:, None] * block_hinv[j, j:][None]
            errors[:, j] = err
        w[:, end:] -= errors @ hinv[start:end, end:]
    return codes[:, torch.argsort(perm)]


# --- bytes ----------------------------------------------------------------------------------------


def _u8(x: Tensor) -> Tensor:
    return x.to(torch.int64).to(torch.uint8)


def _half_bytes(x: Tensor) -> Tensor:
    """(…,) fp16 → (…, 2) little-endian bytes."""
    return x.to(torch.float16).contiguous()[..., None].view(torch.uint8)


def _nibbles(lo: Tensor, hi: Tensor) -> Tensor:
    return _u8((lo.to(torch.int64) & 0xF) | ((hi.to(torch.int64) & 0xF) << 4))


def _k_scales(sc: Tensor, m: Tensor) -> Tensor:
    """8 six-bit scales and mins (…, 8) each → ggml's 12 packed bytes (…, 12) (``get_scale_min_k4``'s inverse)."""
    sc, m = sc.to(torch.int64), m.to(torch.int64)
    first = sc[..., :4] | ((sc[..., 4:] >> 4) << 6)
    second = m[..., :4] | ((m[..., 4:] >> 4) << 6)
    third = (sc[..., 4:] & 0xF) | ((m[..., 4:] & 0xF) << 4)
    return _u8(torch.cat([first, second, third], -1))


def pack(codes: Tensor, grid: BlockGrid) -> np.ndarray:
    """Codes ``(N, K)`` on ``grid`` as the type's bytes, ``(N, K / block · block_bytes)`` uint8 (a GGUF tensor's data)."""
    qt = grid.qtype
    n, k = codes.shape
    nb = k // qt.block
    u = codes.to(torch.int64).reshape(n, nb, qt.block)  # (N, nb, block)
    d = _half_bytes(grid.d.reshape(n, nb))  # (N, nb, 2)
    if qt.name in ("q4_0", "q4_1"):
        body = _nibbles(u[..., :16], u[..., 16:])
        head = [d] if qt.symmetric else [d, _half_bytes(_need(grid.dmin).reshape(n, nb))]
        blocks = torch.cat([*head, body], -1)
    elif qt.name in ("q5_0", "q5_1"):
        bit = torch.arange(32)
        qh = (((u >> 4) & 1) << bit).sum(-1)  # (N, nb) uint32: bit j = code j's fifth bit
        qh_bytes = _u8(torch.stack([(qh >> (8 * i)) & 0xFF for i in range(4)], -1))
        head = [d] if qt.symmetric else [d, _half_bytes(_need(grid.dmin).reshape(n, nb))]
        blocks = torch.cat([*head, qh_bytes, _nibbles(u[..., :16], u[..., 16:])], -1)
    elif qt.name == "q8_0":
        blocks = torch.cat([d, (u - 128).to(torch.int8).view(torch.uint8)], -1)
    elif qt.name in ("q4_k", "q5_k"):
        chunks = u.reshape(n, nb, 4, 2, 32)  # 4 pairs of sub-blocks: low nibbles the first, high the second
        qs = _nibbles(chunks[..., 0, :], chunks[..., 1, :]).reshape(n, nb, 128)
        scales = _k_scales(_need(grid.sub_scale).reshape(n, nb, 8), _need(grid.sub_min).reshape(n, nb, 8))
        dmin = _half_bytes(_need(grid.dmin).reshape(n, nb))
        if qt.name == "q4_k":
            blocks = torch.cat([d, dmin, scales, qs], -1)
        else:
            high = ((u.reshape(n, nb, 8, 32) >> 4) & 1) << torch.arange(8)[:, None]  # sub-block j's fifth bit at bit j
            blocks = torch.cat([d, dmin, scales, _u8(high.sum(-2)), qs], -1)
    elif qt.name == "q6_k":
        halves = u.reshape(n, nb, 2, 4, 32)  # each 128: four runs of 32
        ql = torch.cat([_nibbles(halves[..., 0, :], halves[..., 2, :]), _nibbles(halves[..., 1, :], halves[..., 3, :])], -1)
        qh = torch.stack([((halves[..., i, :] >> 4) & 3) << (2 * i) for i in range(4)]).sum(0)  # (N, nb, 2, 32)
        isc = _need(grid.sub_scale).reshape(n, nb, 16).to(torch.int8).view(torch.uint8)
        blocks = torch.cat([ql.reshape(n, nb, 128), _u8(qh).reshape(n, nb, 64), isc, d], -1)
    else:  # pragma: no cover - BLOCK_TYPES lists exactly the cases above
        raise ValueError(qt.name)
    assert blocks.shape[-1] == qt.block_bytes, (qt.name, blocks.shape)
    return blocks.reshape(n, nb * qt.block_bytes).numpy()


def _need(x: Tensor | None) -> Tensor:
    if x is None:  # pragma: no cover - block_grid fills what each type stores
        raise ValueError("this grid lacks a stored piece its type needs; build it with block_grid")
    return x


def quantize_blocks(weight: Tensor, qtype: BlockType | str, hessian: Tensor | None = None,
                    use_gptq: bool = False, grid: BlockGrid | None = None) -> tuple[np.ndarray, Tensor]:
    """``weight`` (N, K) in ``qtype``: ``(bytes (N, K/block · block_bytes), dequantized weight (N, K))``.

    The grid is ``grid`` when given (one a recovery trained on), else chosen with ``diag(hessian)`` as importance
    when given; ``use_gptq`` picks the codes by GPTQ on that grid (needs ``hessian``), else by rounding to nearest.
    """
    if grid is None:
        grid = block_grid(weight, qtype, None if hessian is None else torch.diag(hessian))
    if use_gptq:
        if hessian is None:
            raise ValueError("GPTQ codes need the layer's input Hessian (calibration data)")
        codes = gptq_codes(weight, hessian, grid)
    else:
        codes = grid.codes(weight.detach().float())
    return pack(codes, grid), grid.dequantize(codes)

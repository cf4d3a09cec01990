"""The teachers' next-token distributions at every position of every training sequence, kept as top-k, computed once.

Per position: the ``k`` largest log-probabilities (at the stage's temperature, float32), their token
ids (int32) and the log of the mass of all other tokens (one bucket), so the loss
(:func:`~slimtorch.distill.losses.top_k_token_kl`) runs the student alone. At k = 64 a position costs
(64 · 8 + 4) bytes = 516 B instead of 98 KB for SmolLM2's 49,152-way distribution in fp16. A cache
larger than ``max_bytes`` is a memory-mapped file in the stage's work directory, removed when the hop ends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimtorch.batch import forward
from slimtorch.distill.sequences import TokenSequences

log = logging.getLogger(__name__)


@torch.no_grad()  # teachers are targets: recording their autograd graph would only cost time and memory
def teacher_log_probs(teachers: Sequence[nn.Module], weights: Sequence[float], x: dict[str, Tensor], temperature: float) -> Tensor:
    """``log Σ_i w_i softmax(z_i / T)``: the teachers' mixed next-token log-probabilities. -> (B, T, V) float32."""
    total = float(sum(weights))
    parts = []
    for teacher, w in zip(teachers, weights):
        teacher.eval()
        parts.append(F.log_softmax(forward(teacher, x).float() / temperature, dim=-1) + math.log(w / total))
    return parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts), dim=0)


def top_k_of(log_probs: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(values (…, k), ids (…, k), rest (…))``: the k largest log-probabilities, their ids, the log-mass of the others."""
    values, ids = log_probs.topk(k, dim=-1)
    if k < log_probs.shape[-1]:
        rest = log_probs.scatter(-1, ids, float("-inf")).logsumexp(-1)
    else:
        rest = log_probs.new_full(log_probs.shape[:-1], float("-inf"))
    return values, ids, rest


class TopKTeacherCache:
    """Teacher top-k log-probabilities of ``N`` sequences of ``T`` tokens, looked up by sequence index.

    Example:
        >>> cache = TopKTeacherCache.build(teachers, weights, sequences, k=64, temperature=1.0)  # doctest: +SKIP
        >>> values, ids, rest = cache.lookup(idx)  # (B, T, k), (B, T, k), (B, T)  # doctest: +SKIP
    """

    def __init__(self, values: np.ndarray, ids: np.ndarray, rest: np.ndarray, files: list[Path]) -> None:
        self.values, self.ids, self.rest, self.files = values, ids, rest, files

    @classmethod
    def build(cls, teachers: Sequence[nn.Module], weights: Sequence[float], sequences: TokenSequences, *, k: int,
              temperature: float, work_dir: Path | None = None, max_bytes: float = math.inf, batch_size: int = 8) -> TopKTeacherCache:
        """Run the teachers once over ``sequences`` (in batches of ``batch_size``) and keep their top ``k`` per position."""
        n, t = sequences.input_ids.shape
        shapes = {"values": ((n, t, k), np.float32), "ids": ((n, t, k), np.int32), "rest": ((n, t), np.float32)}
        nbytes = sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in shapes.values())
        files: list[Path] = []
        arrays: dict[str, np.ndarray] = {}
        for name, (shape, dtype) in shapes.items():
            if nbytes > max_bytes and work_dir is not None:  # scratch data of this hop: rebuilt, never resumed from
                work_dir.mkdir(parents=True, exist_ok=True)
                files.append(work_dir / f"teacher_top_k_{name}.npy")
                arrays[name] = np.lib.format.open_memmap(files[-1], mode="w+", dtype=dtype, shape=shape)
            else:
                arrays[name] = np.empty(shape, dtype=dtype)
        for start in range(0, n, batch_size):
            x = {"input_ids": sequences.input_ids[start : start + batch_size],
                 "attention_mask": sequences.attention_mask[start : start + batch_size]}
            values, ids, rest = top_k_of(teacher_log_probs(teachers, weights, x, temperature).cpu(), k)
            stop = start + len(values)
            arrays["values"][start:stop], arrays["ids"][start:stop], arrays["rest"][start:stop] = (
                values.numpy(), ids.int().numpy(), rest.numpy())
        where = f"a {nbytes / 1e6:.0f} MB file in {work_dir}" if files else f"{nbytes / 1e6:.0f} MB of memory"
        log.info("teacher top-%d cache: %d sequences of %d tokens, %s", k, n, t, where)
        return cls(arrays["values"], arrays["ids"], arrays["rest"], files)

    def lookup(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(values (B, T, k), ids (B, T, k), rest (B, T))`` of sequences ``idx`` (B,)."""
        rows = np.sort(idx.cpu().numpy())  # memmaps read fastest in order; put back in the batch's order below
        order = torch.from_numpy(np.searchsorted(rows, idx.cpu().numpy()))
        values, ids, rest = (torch.from_numpy(np.asarray(a[rows]))[order] for a in (self.values, self.ids, self.rest))
        return values, ids, rest

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.ids.nbytes + self.rest.nbytes)

    def describe(self) -> dict[str, Any]:
        return {"sequences": int(self.values.shape[0]), "top_k": int(self.values.shape[-1]), "mb": round(self.nbytes / 1e6, 1),
                "on_disk": bool(self.files)}

    def close(self) -> None:
        """Drop the arrays and delete the cache files."""
        self.values = self.ids = self.rest = np.empty(0)
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files.clear()

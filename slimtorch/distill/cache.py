"""The teachers' targets for every example of the distillation set, computed once so training runs only the student.

Per example: the mixed output target (kept in its dtype: embeddings and soft targets are small) and
each tapped feature in fp16. A token feature (B, T, H) of a text batch is stored trimmed to the
example's real tokens (its ``attention_mask``), so a sentence costs its own length whatever batch it
was padded in, and is re-padded to the training batch's length on lookup. A cache larger than
``max_bytes`` goes to a file in the stage's work directory (read back through a memory map) instead of
memory; the file is removed when the hop ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from slimtorch.core import Batch
from slimtorch.distill.losses import is_token_feature
from slimtorch.errors import DataError

log = logging.getLogger(__name__)

FEATURE_DTYPE = torch.float16


def attention_mask_of(x: Batch) -> Tensor | None:
    """The batch's ``attention_mask`` (B, T) for tokenized text, else None."""
    return x.get("attention_mask") if isinstance(x, dict) else None


@dataclass
class _Rows:
    """One feature's rows: a flat (rows, *shape) store, and where each example's rows start and how many there are."""

    is_tokens: bool
    chunks: list[np.ndarray] = field(default_factory=list)
    start: np.ndarray | None = None  # (N,) first row of each example
    count: np.ndarray | None = None  # (N,) rows of each example (1 for a dense feature)
    store: np.ndarray | None = None  # (rows, *shape), in memory or a read-only memmap


class TeacherCache:
    """Teacher targets of ``n`` examples, looked up by example index. See the module docstring.

    Example:
        >>> cache = TeacherCache.build(panel.compute, loader, n, work_dir, max_bytes)  # doctest: +SKIP
        >>> target, features = cache.lookup(idx, attention_mask)  # doctest: +SKIP
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.target: Tensor | None = None
        self.rows: dict[str, _Rows] = {}
        self.files: list[Path] = []
        self.nbytes = 0

    @classmethod
    @torch.no_grad()
    def build(cls, compute: Callable[[Batch], tuple[Tensor, dict[str, Tensor]]], batches: Iterable[tuple[Batch, tuple[Tensor, Tensor]]],
              n: int, work_dir: Path | None, max_bytes: float) -> TeacherCache:
        """Run ``compute`` (the teachers) once over ``batches`` of ``(x, (labels, index))``.

        Raises:
            DataError: the distillation set is empty.
        """
        cache = cls(n)
        order: list[Tensor] = []
        for x, (_, idx) in batches:
            target, feats = compute(x)
            if cache.target is None:
                cache.target = target.new_empty((n, *target.shape[1:]))
            idx = idx.cpu()
            cache.target[idx.to(cache.target.device)] = target
            order.append(idx)
            mask = attention_mask_of(x)
            cache._add({k: v.cpu() for k, v in feats.items()}, None if mask is None else mask.cpu(), idx)
        if cache.target is None:
            raise DataError("distill: the distillation set is empty; there is nothing to learn from.")
        cache._finish(torch.cat(order), work_dir, max_bytes)
        return cache

    def _add(self, feats: dict[str, Tensor], mask: Tensor | None, idx: Tensor) -> None:
        for key, value in feats.items():
            rows = self.rows.setdefault(key, _Rows(is_tokens=is_token_feature(value, mask)))
            if rows.count is None:
                rows.count = np.zeros(self.n, dtype=np.int64)
            if rows.is_tokens:
                assert mask is not None
                keep = mask.bool()
                rows.chunks.append(value[keep].to(FEATURE_DTYPE).numpy())  # (real tokens of the batch, H), row-major order
                rows.count[idx.numpy()] = keep.sum(1).numpy()
            else:
                rows.chunks.append(value.to(FEATURE_DTYPE).numpy())
                rows.count[idx.numpy()] = 1

    def _finish(self, order: Tensor, work_dir: Path | None, max_bytes: float) -> None:
        """Concatenate the chunks (to a file when the cache is over ``max_bytes``) and index each example's rows."""
        self.nbytes = sum(c.nbytes for r in self.rows.values() for c in r.chunks)
        to_file = self.nbytes > max_bytes and work_dir is not None
        for i, (key, rows) in enumerate(self.rows.items()):
            assert rows.count is not None
            counts_in_order = rows.count[order.numpy()]
            starts_in_order = np.concatenate([[0], np.cumsum(counts_in_order)[:-1]])
            rows.start = np.zeros(self.n, dtype=np.int64)
            rows.start[order.numpy()] = starts_in_order
            if to_file:
                assert work_dir is not None
                work_dir.mkdir(parents=True, exist_ok=True)
                path = work_dir / f"teacher_cache_{i}.f16"
                with path.open("wb") as f:  # scratch data of this hop: rebuilt, never resumed from
                    for chunk in rows.chunks:
                        f.write(np.ascontiguousarray(chunk).tobytes())
                shape = (int(counts_in_order.sum()), *rows.chunks[0].shape[1:])
                rows.store = np.memmap(path, dtype=np.float16, mode="r", shape=shape)
                self.files.append(path)
            else:
                rows.store = np.concatenate(rows.chunks)
            rows.chunks = []
        where = f"a {self.nbytes / 1e6:.0f} MB file in {work_dir}" if to_file else f"{self.nbytes / 1e6:.0f} MB of memory"
        log.info("teacher cache: %d examples, %d features, %s", self.n, len(self.rows), where)

    @property
    def is_on_disk(self) -> bool:
        return bool(self.files)

    def lookup(self, idx: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Targets of examples ``idx`` (B,); token features re-padded to ``mask`` (B, T). -> (target, {key: feature})."""
        assert self.target is not None
        feats = {}
        device = self.target.device
        ids = idx.cpu().numpy()
        for key, rows in self.rows.items():
            assert rows.store is not None and rows.start is not None and rows.count is not None
            counts = rows.count[ids]
            flat = np.concatenate([np.arange(s, s + c) for s, c in zip(rows.start[ids], counts)])
            values = torch.from_numpy(np.asarray(rows.store[flat])).float()
            if not rows.is_tokens:
                feats[key] = values.to(device)
                continue
            if mask is None or not torch.equal(mask.sum(1).cpu(), torch.from_numpy(counts)):
                raise DataError(
                    "distill: the cached teacher features do not fit this batch's tokens (a sentence tokenized to another "
                    "length than when the cache was built); set distill.cache_teacher: false."
                )
            out = values.new_zeros((*mask.shape, values.shape[-1]))  # (B, T, H)
            out[mask.bool().cpu()] = values
            feats[key] = out.to(device)
        return self.target[idx.to(device)], feats

    def close(self) -> None:
        """Drop the stores and delete the cache files."""
        self.rows.clear()
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files.clear()

    def describe(self) -> dict[str, Any]:
        return {"examples": self.n, "features": len(self.rows), "feature_mb": round(self.nbytes / 1e6, 1),
                "on_disk": self.is_on_disk}

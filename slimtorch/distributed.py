"""One process or many (``torchrun``): who trains, who writes, and where the others wait.

Under ``torchrun`` every rank runs the whole recipe, so every rank holds the same model at every step:
training (in :func:`slimtorch.train.fit`) is DDP with a ``DistributedSampler``, so gradients are
averaged and weights stay identical; everything deterministic (pruning masks, calibration, stage
logic) is simply computed on every rank. Only rank 0 touches the output directory (artifacts,
checkpoints, state, report) and measures; the others wait at barriers. Work whose result can differ
between processes (the planner's latency measurements) runs on rank 0 inside :func:`local_only`
and is broadcast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

T = TypeVar("T")

_LOCAL: ContextVar[bool] = ContextVar("slimtorch_local_only", default=False)


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several (torchrun sets WORLD_SIZE and RANK)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); False when not under torchrun."""
    if not launched_by_torchrun():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that owns the output directory (rank 0, or the only process)."""
    return rank() == 0


def training_world_size() -> int:
    """Ranks that train together right now: 1 inside :func:`local_only`."""
    return 1 if _LOCAL.get() else world_size()


@contextmanager
def local_only() -> Iterator[None]:
    """Train without DDP in this block (a rank working alone while the others wait)."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def barrier() -> None:
    if world_size() > 1 and not _LOCAL.get():
        dist.barrier()


def from_main(value: T | None) -> T:
    """Rank 0's ``value`` on every rank (objects are pickled by torch.distributed; only ever our own results)."""
    if world_size() == 1:
        return cast(T, value)  # the only process is the main one, whose value is the result
    box: list[Any] = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_then_all(fn: Any) -> Any:
    """Run ``fn`` on rank 0; every rank gets its result, or re-raises its error (so no rank waits forever)."""
    outcome: tuple[str, Any] | None = None
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - handed to the other ranks, then raised here too
            outcome = ("error", exc)
    kind, value = from_main(outcome)
    if kind == "error":
        raise value
    return value


def finish(code: int) -> None:
    """Leave a torchrun job: tear the group down and exit at once.

    A rank that used DDP can abort at interpreter exit (``terminate called without an active
    exception``) at random; ``os._exit`` after flushing skips that teardown.
    """
    import sys

    if dist.is_available() and dist.is_initialized():
        try:
            if code == 0:  # after a failure a peer may be gone: waiting for it would hang until gloo's timeout
                dist.barrier()
        finally:
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

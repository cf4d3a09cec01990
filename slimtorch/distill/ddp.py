"""Distributed distillation with torch.distributed (DDP): gloo on CPU, nccl on GPUs.

Two ways in:

- ``distill: {ddp: {world_size: 2}}`` — the stage spawns ``world_size`` local worker processes, each
  trains its shard with DDP, and rank 0 hands the weights back (they rendezvous through a file, or on
  ``ddp.port`` when one is set);
- under ``torchrun`` (the process group is already initialised) the stage trains with DDP in place,
  every rank running the same recipe.

Workers end with ``dist.destroy_process_group(); os._exit(0)`` once their results are on disk: a
rank that holds a DDP wrapper can otherwise abort at interpreter exit (SIGABRT) at random.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from slimtorch.core import RunContext
from slimtorch.data.bundle import DataBundle
from slimtorch.distill.config import DDPSpec, DistillConfig, FeatureSpec
from slimtorch.distill.engine import train_hop
from slimtorch.errors import TrainingError
from slimtorch.io import atomic_write_json
from slimtorch.train.loop import convergence_note

log = logging.getLogger(__name__)


@dataclass
class HopJob:
    """Everything a worker needs to train one hop (picklable: no progress callback, no hooks)."""

    student: nn.Module
    teachers: Sequence[nn.Module]
    weights: Sequence[float]
    data: DataBundle
    config: DistillConfig
    seed: int
    work_dir: Path
    stage_index: int
    epochs: int | None
    pairs: Sequence[FeatureSpec]
    description: str
    checkpoint_dir: Path | None


def _worker(rank: int, world_size: int, backend: str, port: int | None, job: HopJob, out_dir: str) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if port is None:
        # A file in the job's private directory: a port probed free in the parent can be taken (by any process's
        # outgoing connection, or another run) in the seconds the workers take to start on a busy machine.
        dist.init_process_group(backend, init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank, world_size=world_size)
    else:
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    # mp.spawn hands every worker the parent's tensors in shared memory: trained in place, the ranks would all
    # update one student storage, each applying every step again, in whatever order the scheduler interleaves them.
    job.student = copy.deepcopy(job.student)
    try:
        ctx = RunContext(data=job.data, teacher=job.teachers[0], seed=job.seed, work_dir=job.work_dir, stage_index=job.stage_index)
        hop = train_hop(job.student, job.teachers, job.weights, job.data, job.config, ctx, epochs=job.epochs, pairs=job.pairs,
                        description=job.description, checkpoint_dir=job.checkpoint_dir)
        if rank == 0:
            state = {k: v.detach().contiguous().clone() for k, v in job.student.state_dict().items()}
            save_file(state, os.path.join(out_dir, "student.safetensors"))
            fit = hop.fit
            atomic_write_json(Path(out_dir) / "result.json", {
                "best_metric": fit.best_metric, **fit.summary(), "history": fit.history, "cached": hop.cached,
                "world_size": hop.world_size, "adapter_params": hop.adapter_params, "frozen_params": hop.frozen_params,
                "teacher_cache": hop.cache, "convergence_note": convergence_note(fit, job.description, job.config.min_loss_improvement)})
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)


def spawn_hop(job: HopJob, spec: DDPSpec) -> dict[str, Any]:
    """Train one hop on ``spec.world_size`` spawned processes; load the result into ``job.student``.

    Returns the fit summary rank 0 wrote (best metric, epochs run, steps, history).

    Raises:
        TrainingError: a worker failed (its traceback is in the message).
    """
    import json

    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    port = spec.port  # None: the workers meet through a file in out_dir (see _worker)
    with tempfile.TemporaryDirectory(prefix="slimtorch-ddp-") as out_dir:
        try:
            mp.spawn(_worker, args=(spec.world_size, spec.backend, port, job, out_dir), nprocs=spec.world_size, join=True)
        except Exception as exc:  # ProcessRaisedException / ProcessExitedException carry the worker's error
            raise TrainingError(f"distill.ddp: a worker failed ({exc}). Try ddp.world_size: 1 to see the error directly.") from exc
        result_path = Path(out_dir) / "result.json"
        if not result_path.exists():
            raise TrainingError("distill.ddp: the workers exited without writing a result; see the log above.")
        result = json.loads(result_path.read_text())
        job.student.load_state_dict(load_file(os.path.join(out_dir, "student.safetensors")))
    return result


def job_for(ctx: RunContext, **kwargs: Any) -> HopJob:
    """A :class:`HopJob` from the run context (drops what cannot cross a process boundary)."""
    return HopJob(seed=ctx.seed, work_dir=ctx.work_dir, stage_index=ctx.stage_index, **kwargs)


def single_process(config: DistillConfig) -> DistillConfig:
    """The same config without the ``ddp`` block (what each worker runs)."""
    return config.model_copy(update={"ddp": None})


__all__ = ["DDPSpec", "HopJob", "job_for", "single_process", "spawn_hop"]

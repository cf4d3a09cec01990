"""The one small training loop that teacher training, fine-tuning, distillation, pruning recovery and LoRA share.

``epochs`` is a ceiling, not a promise: training stops once it has converged, i.e. when for
``patience`` epochs (default 10) neither the validation metric has improved nor the epoch's mean
training loss has fallen below its best by more than ``min_loss_improvement`` (default 1 %, relative)
and more than ``LOSS_ATOL`` (1e-4).
The best weights by the validation metric are kept (ties go to the later epoch), and :class:`FitResult` says at which epoch it
converged or, when the ceiling came first, that it had not (:func:`convergence_note` words that for
the report). AdamW with a linear warm-up then a constant rate by default (see
:mod:`slimtorch.train.schedule` for ``cosine``/``onecycle``/``plateau``); ``lr: auto`` runs a short
range test first (:mod:`slimtorch.train.lr_range`).

Also: per-epoch checkpoints for ``--resume`` (safetensors + a ``weights_only`` optimizer and schedule
state, written as one directory swap so a kill never leaves a mixed checkpoint), a stop with a clear
error on a non-finite loss that keeps the last good checkpoint, and a stop when the step's time budget
(``resources.max_stage_seconds``) runs out.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from slimtorch.core import Batch, RunContext, seed_everything
from slimtorch.device import to_device
from slimtorch.distributed import is_main, local_only, main_then_all, rank, training_world_size
from slimtorch.errors import ArtifactError, TrainingError, UnsupportedModuleError
from slimtorch.io import atomic_dir, atomic_write_bytes, atomic_write_json, recover_dir
from slimtorch.resources import over_time_budget
from slimtorch.train.config import TrainConfig, train_fields  # noqa: F401  re-exported for stages
from slimtorch.train.lr_range import lr_range_test
from slimtorch.train.schedule import LRSchedule
from slimtorch.version import __version__

log = logging.getLogger(__name__)

# loss_fn(model, x, y) -> scalar loss; ``y`` is the loader's target: labels (B,), which may contain UNLABELED (-1)
# entries, or what a custom loader pairs with them (distillation: (labels, example indices)).
LossFn = Callable[[nn.Module, Batch, Any], Tensor]

# Bump when the checkpoint layout changes; a checkpoint of another version is refused, not guessed at.
CHECKPOINT_VERSION = 2


StopReason = Literal["converged", "ceiling", "max_steps", "time_budget"]


@dataclass
class FitResult:
    """How a :func:`fit` run went. Epochs are 0-based; ``history`` has one ``{epoch, loss, val, lr}`` per epoch."""

    best_metric: float
    best_epoch: int
    epochs_run: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0
    stopped_by_time_budget: bool = False
    epochs_ceiling: int = 0
    lr: float = 0.0  # the peak learning rate used (the range test's choice with ``lr: auto``)
    stop_reason: StopReason = "ceiling"
    converged_epoch: int | None = None  # last epoch that improved the val metric or the loss, when it stopped converged

    @property
    def converged(self) -> bool:
        return self.stop_reason == "converged"

    def summary(self) -> dict[str, Any]:
        """The figures a stage records in ``StageRecord.details``."""
        return {"best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "epochs_ceiling": self.epochs_ceiling,
                "converged_epoch": self.converged_epoch, "stop_reason": self.stop_reason, "steps": self.steps, "lr": self.lr}


# A fall of the epoch loss smaller than this never counts as learning, whatever its relative size: a loss
# of 1e-6 that halves is a model that has already fitted its training data.
LOSS_ATOL = 1e-4


def loss_improvements(losses: list[float], min_improvement: float) -> list[int]:
    """Epochs whose loss fell below the best before them by more than ``min_improvement`` (relative) and ``LOSS_ATOL``.

    Example:
        >>> loss_improvements([1.0, 0.5, 0.499, 0.45, 0.46, 0.0015, 0.00145, 0.0001], 0.01)
        [0, 1, 3, 5, 7]
    """
    out, best = [], math.inf
    for i, loss in enumerate(losses):
        if best - loss > max(min_improvement * best, LOSS_ATOL) or best == math.inf:
            out.append(i)
            best = loss
    return out


def converged_at(history: list[dict[str, float]], patience: int, min_loss_improvement: float) -> int | None:
    """The last epoch that improved the val metric or the training loss, if ``patience`` epochs have passed since; else None."""
    if not history:
        return None
    vals = [h["val"] for h in history]
    last_val = max(range(len(vals)), key=lambda i: (vals[i], -i))  # first epoch reaching the best
    last_loss = loss_improvements([h["loss"] for h in history], min_loss_improvement)[-1]
    last = max(last_val, last_loss)
    return last if len(history) - 1 - last >= patience else None


def convergence_note(result: FitResult, what: str, min_loss_improvement: float = 0.01) -> str | None:
    """A report note when training stopped at its ceiling while still learning; None when it converged.

    "Still learning": the best validation metric or a fall of the training loss of more than
    ``min_loss_improvement`` came within the last ``k`` epochs (k = a third of the run, 2 to 10).
    """
    if result.stop_reason in ("converged", "time_budget") or result.epochs_run < 2:
        return None
    run = result.history
    k = max(2, min(10, len(run) // 3))
    window_start = len(run) - k
    signs = []
    if result.best_epoch == run[-1]["epoch"]:
        signs.append("its best validation metric came in the last epoch")
    elif result.best_epoch >= run[window_start]["epoch"]:
        signs.append(f"its validation metric was still rising (best in epoch {result.best_epoch + 1} of {len(run)})")
    falls = loss_improvements([h["loss"] for h in run], min_loss_improvement)
    if falls and falls[-1] >= window_start:
        start, end = run[max(window_start - 1, 0)]["loss"], run[-1]["loss"]
        signs.append(f"the training loss was still falling ({start:.4g} → {end:.4g} over the last {k} epochs)")
    if not signs:
        return None
    limit = f"max_steps ({result.steps} steps)" if result.stop_reason == "max_steps" else f"its {result.epochs_ceiling}-epoch ceiling"
    return (f"{what} did not converge: it stopped at {limit} while {' and '.join(signs)}. Raise `epochs` (a ceiling: "
            "training stops by itself once it has converged), or the learning rate.")


def _state_bytes(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, meta: dict[str, Any]) -> None:
    """Write model (safetensors), optimizer/scheduler state and meta as one unit.

    The three files go into a temporary directory that replaces ``path`` by rename, so a process
    killed at any moment leaves either the previous checkpoint or the new one, never a mix.
    """
    import io

    from safetensors.torch import save

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buf)
    with atomic_dir(path) as tmp:
        atomic_write_bytes(tmp / "model.safetensors", save(_unshare(state)))
        atomic_write_bytes(tmp / "optim.pt", buf.getvalue())
        atomic_write_json(tmp / "meta.json", {**meta, "checkpoint_version": CHECKPOINT_VERSION, "slimtorch_version": __version__})


def _unshare(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Copy tensors that share storage (tied weights): safetensors refuses shared storage, and a checkpoint
    keeps every key so it reloads with ``strict=True`` (artifacts instead drop the duplicate, see artifact.py)."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in state.items():
        if v.data_ptr() in seen and v.numel() > 0:
            out[k] = v.clone()
        else:
            seen[v.data_ptr()] = k
            out[k] = v
    return out


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`.

    The optimizer state is read with ``torch.load(weights_only=True)``: a pickle that would import
    or call anything besides tensors and plain containers is refused, never executed.

    Raises:
        ArtifactError: the checkpoint is corrupted, truncated, unsafe, or from another checkpoint version.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"checkpoint {path} is corrupted or incomplete ({exc}); delete it to start the stage again.") from exc
    version = meta.get("checkpoint_version") if isinstance(meta, dict) else None
    if version != CHECKPOINT_VERSION:
        raise ArtifactError(
            f"checkpoint {path} was written by slimtorch {meta.get('slimtorch_version', '?') if isinstance(meta, dict) else '?'} "
            f"(checkpoint format {version}); this slimtorch ({__version__}) reads format {CHECKPOINT_VERSION}. "
            "Delete it (or run with --force) to start the stage again."
        )
    try:
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        extra = torch.load(path / "optim.pt", weights_only=True)
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        missing = [k for k in ("epoch", "steps", "history", "best_metric", "best_epoch") if k not in meta]
        if missing:
            raise KeyError(f"meta.json lacks {', '.join(missing)}")
    except pickle.UnpicklingError as exc:
        raise ArtifactError(
            f"checkpoint {path}/optim.pt holds objects other than tensors, so it was refused without running it "
            f"({str(exc).splitlines()[0]}). slimtorch never unpickles code; delete the checkpoint to start the stage again."
        ) from exc
    except (OSError, SafetensorError, RuntimeError, KeyError, ValueError, TypeError, EOFError) as exc:
        raise ArtifactError(f"checkpoint {path} is corrupted or incomplete ({exc}); delete it to start the stage again.") from exc
    return meta


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    loader: DataLoader,
    config: TrainConfig,
    ctx: RunContext,
    *,
    evaluate: Callable[[nn.Module], float] | None = None,
    checkpoint_dir: Path | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    description: str = "train",
    params: list[nn.Parameter] | None = None,
) -> FitResult:
    """Train ``model`` in place until it converges (or hits ``config.epochs``) and leave it holding its best weights.

    Args:
        loss_fn: ``loss_fn(model, x, y) -> scalar``.
        evaluate: validation metric (higher is better), called after each epoch; without it the
            negative training loss stands in.
        checkpoint_dir: where per-epoch checkpoints go; if one exists there, training resumes from it.
        after_step: called after every optimizer step (e.g. re-apply pruning masks).
        params: the parameters to train (default: all that require grad).

    Raises:
        TrainingError: the loss became NaN/inf; the model is restored to the last good epoch.
    """
    seed_everything(ctx.seed)
    net = model.to(ctx.device)  # the module itself; `model` becomes its DDP wrapper under torchrun
    trainable = _trainable(model, params, description)
    whole_batches = loader  # the range test sees the batches one process would (rank 0 runs it alone)
    model, loader = _distributed(model, net, loader, ctx)
    resuming = checkpoint_dir is not None and (checkpoint_dir / "last" / "meta.json").exists()
    lr = _peak_lr(config, net, loss_fn, whole_batches, trainable, resuming, ctx.seed)
    run = _EpochRunner.create(model, net, loss_fn, config, ctx, trainable, lr, len(loader), after_step, description)
    state = _start(run, net, config, lr, checkpoint_dir, resuming, description)
    with ctx.progress(description, config.epochs * len(loader)) as advance:
        run.advance = advance
        advance(state.start_epoch * len(loader))
        for epoch in range(state.start_epoch, config.epochs):
            if _stops_before(state.result, config, description, epoch):
                break
            total, count = _sum_over_ranks(*run.train_epoch(loader, state, epoch))  # every DDP rank decides alike
            if _end_epoch(run, state, net, evaluate, total, count, epoch, checkpoint_dir, description):
                break
    _finish(state.result, config)
    net.load_state_dict(state.best_state)
    net.eval()
    return state.result


@dataclass
class _FitState:
    """What changes as training goes: the result so far, the best weights, the epoch to start from."""

    result: FitResult
    best_state: dict[str, Tensor]
    start_epoch: int = 0


def _trainable(model: nn.Module, params: list[nn.Parameter] | None, description: str) -> list[nn.Parameter]:
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UnsupportedModuleError(
            f"{description}: {type(model).__name__} has no trainable parameters, so there is nothing to train. "
            "Remove the training stage (or its epochs), or give a model with parameters."
        )
    return trainable


def _distributed(model: nn.Module, net: nn.Module, loader: DataLoader, ctx: RunContext) -> tuple[nn.Module, DataLoader]:
    """Under torchrun, ``model`` wrapped in DDP and ``loader`` sharded; unchanged in a single process."""
    if training_world_size() > 1:
        # torchrun: every rank trains its shard of each batch; gradients are averaged, weights stay identical
        from torch.nn.parallel import DistributedDataParallel

        if not isinstance(model, DistributedDataParallel):
            model = DistributedDataParallel(net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
            loader = _sharded(loader)
    return model, loader


def _peak_lr(config: TrainConfig, net: nn.Module, loss_fn: LossFn, whole_batches: DataLoader, trainable: list[nn.Parameter],
             resuming: bool, seed: int) -> float:
    """``config.lr``, or with ``lr: auto`` the range test's choice (rank 0 alone runs it and tells the others)."""
    if config.lr != "auto":
        return config.lr
    # On resume the checkpointed schedule restores the rate the range test chose.
    lr = 1e-3 if resuming else _on_main_alone(
        lambda: lr_range_test(net, loss_fn, whole_batches, trainable, weight_decay=config.weight_decay).lr)
    seed_everything(seed)
    return lr


def _start(run: _EpochRunner, net: nn.Module, config: TrainConfig, lr: float, checkpoint_dir: Path | None, resuming: bool,
           description: str) -> _FitState:
    """A fresh state, or the one the ``last`` checkpoint in ``checkpoint_dir`` holds."""
    result = FitResult(best_metric=-math.inf, best_epoch=-1, epochs_run=0, steps=0, epochs_ceiling=config.epochs, lr=lr)
    state = _FitState(result=result, best_state=_state_bytes(net))
    if checkpoint_dir is not None:
        recover_dir(checkpoint_dir / "last")
        recover_dir(checkpoint_dir / "best")
    if checkpoint_dir is None or not resuming:
        return state
    meta = load_checkpoint(checkpoint_dir / "last", net, run.optimizer, run.scheduler)
    state.start_epoch = result.resumed_from_epoch = meta["epoch"] + 1
    result.steps, result.history = meta["steps"], meta["history"]
    result.best_metric, result.best_epoch = meta["best_metric"], meta["best_epoch"]
    result.lr = run.scheduler.base_lr
    result.epochs_run = state.start_epoch
    if (checkpoint_dir / "best" / "meta.json").exists():
        from safetensors.torch import load_file

        state.best_state = load_file(str(checkpoint_dir / "best" / "model.safetensors"))
    else:
        state.best_state = _state_bytes(net)
    log.info("resuming %s at epoch %d", description, state.start_epoch)
    if meta.get("converged_epoch") is not None:  # killed after the last checkpoint of a finished run
        result.stop_reason, result.converged_epoch = "converged", meta["converged_epoch"]
        state.start_epoch = config.epochs
    return state


def _stops_before(result: FitResult, config: TrainConfig, description: str, epoch: int) -> bool:
    """True when ``max_steps`` or the time budget ends training before ``epoch``."""
    if config.max_steps and result.steps >= config.max_steps:
        result.stop_reason = "max_steps"
        return True
    # A time budget stops training only after at least one optimizer step (one-time set-up costs
    # such as the optimizer's first import must not leave a stage untrained).
    return result.stopped_by_time_budget or (result.steps > 0 and _out_of_time(result, description, epoch))


def _end_epoch(run: _EpochRunner, state: _FitState, net: nn.Module, evaluate: Callable[[nn.Module], float] | None,
               total: float, count: int, epoch: int, checkpoint_dir: Path | None, description: str) -> bool:
    """Validate, keep the best weights, checkpoint; True when training has converged."""
    result, config = state.result, run.config
    net.eval()
    metric = evaluate(net) if evaluate is not None else -total / max(count, 1)
    run.scheduler.end_epoch(metric)
    result.history.append({"epoch": epoch, "loss": total / max(count, 1), "val": metric, "lr": run.scheduler.lr})
    result.epochs_run = epoch + 1
    # Ties go to the later epoch: on a coarse metric (accuracy on a few hundred examples) an equally good
    # epoch that has trained longer is the better guess. Convergence counts strict improvements only.
    improved = metric >= result.best_metric
    if improved:
        result.best_metric, result.best_epoch = metric, epoch
        state.best_state = _state_bytes(net)
    if config.patience:
        result.converged_epoch = converged_at(result.history, config.patience, config.min_loss_improvement)
    if checkpoint_dir is not None and is_main():  # one writer; every rank resumes from it
        meta = {"epoch": epoch, "steps": result.steps, "history": result.history, "best_metric": result.best_metric,
                "best_epoch": result.best_epoch, "converged_epoch": result.converged_epoch}
        if improved:
            save_checkpoint(checkpoint_dir / "best", net, run.optimizer, run.scheduler, meta)
        save_checkpoint(checkpoint_dir / "last", net, run.optimizer, run.scheduler, meta)
    if result.converged_epoch is None:
        return False
    result.stop_reason = "converged"
    log.info("%s: converged at epoch %d (stopped at %d, best val at %d)", description, result.converged_epoch,
             epoch, result.best_epoch)
    return True


def _finish(result: FitResult, config: TrainConfig) -> None:
    if result.stopped_by_time_budget:
        result.stop_reason = "time_budget"
    elif config.max_steps and result.steps >= config.max_steps and not result.converged:
        result.stop_reason = "max_steps"


class _Precision:
    """Mixed precision for training: autocast to bf16/fp16 (weights stay fp32) and, for fp16, a gradient scaler."""

    def __init__(self, ctx: RunContext) -> None:
        self.device_type = ctx.device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(ctx.precision)
        self.enabled = self.dtype is not None
        # fp16 gradients underflow without scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler(self.device_type) if ctx.precision == "fp16" and self.device_type == "cuda" else None

    def autocast(self) -> Any:
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


class _ShareOfEachBatch(torch.utils.data.Sampler):
    """This rank's share of each batch one process would take: the same shuffle, the same batches.

    Averaging the ranks' gradients then gives (up to rounding) the single-process step, so a torchrun
    run trains like a one-process run instead of on a different sample order.
    """

    def __init__(self, sampler: Any, batch_size: int, world: int, rank: int) -> None:
        self.sampler, self.batch_size, self.world, self.rank = sampler, batch_size, world, rank

    def __iter__(self) -> Any:
        order = list(self.sampler)  # draws from the loader's generator, reseeded per epoch like one process
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            yield batch[self.rank::self.world] or batch[:1]  # a last batch smaller than the world: repeat one example

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


def _sharded(loader: DataLoader) -> DataLoader:
    """``loader`` split across the training ranks: each takes its share of every batch (see :class:`_ShareOfEachBatch`)."""
    shares = _ShareOfEachBatch(loader.sampler, loader.batch_size or 1, training_world_size(), rank())
    return DataLoader(loader.dataset, batch_sampler=shares, collate_fn=loader.collate_fn, generator=loader.generator)


def _on_main_alone(fn: Callable[[], float]) -> float:
    if training_world_size() == 1:
        return fn()
    with local_only():
        return main_then_all(fn)


@dataclass
class _EpochRunner:
    """What every epoch of one :func:`fit` run shares: the model, its loss, the optimizer and the settings."""

    model: nn.Module  # what the loss calls: ``net``, or its DDP wrapper
    net: nn.Module
    loss_fn: LossFn
    config: TrainConfig
    ctx: RunContext
    optimizer: torch.optim.Optimizer
    scheduler: LRSchedule
    precision: _Precision
    after_step: Callable[[nn.Module], None] | None
    description: str
    advance: Callable[..., None] = field(default=lambda *a, **k: None)

    @classmethod
    def create(cls, model: nn.Module, net: nn.Module, loss_fn: LossFn, config: TrainConfig, ctx: RunContext,
               trainable: list[nn.Parameter], lr: float, batches: int, after_step: Callable[[nn.Module], None] | None,
               description: str) -> _EpochRunner:
        """AdamW on ``trainable`` and its schedule over the run's optimizer steps (``batches`` per epoch)."""
        steps_per_epoch = math.ceil(batches / config.accumulate)  # optimizer steps
        total_steps = max(1, config.epochs * steps_per_epoch)
        if config.max_steps:
            total_steps = min(total_steps, config.max_steps)
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=config.weight_decay)
        precision = _Precision(ctx)
        warmup = min(round(config.warmup_epochs * steps_per_epoch), total_steps // 10)
        scheduler = LRSchedule(optimizer, config.schedule, lr, total_steps=total_steps, warmup_steps=warmup, floor=config.lr_floor)
        return cls(model, net, loss_fn, config, ctx, optimizer, scheduler, precision, after_step, description)

    def train_epoch(self, loader: DataLoader, state: _FitState, epoch: int) -> tuple[float, int]:
        """One pass over ``loader``; returns (sum of the batch losses, batches).

        With ``config.accumulate`` > 1, the gradients of that many batches (fewer at the epoch's end) are averaged
        into one optimizer step.
        """
        seed = self.ctx.seed
        # Same shuffles and dropout whether or not we resumed: reseed per epoch, loader generator too.
        torch.manual_seed(seed * 1000 + epoch)
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(seed * 1000 + epoch)
        self.model.train()
        accumulate, total, count, n = self.config.accumulate, 0.0, 0, len(loader)
        for i, (x, y) in enumerate(loader):
            x, y = to_device(x, self.ctx.device), to_device(y, self.ctx.device)
            group_start = i - i % accumulate
            in_group = min(accumulate, n - group_start)  # batches in this optimizer step
            loss = self._loss(x, y)
            value = loss.item()  # one host sync per step, used for the check and the running mean
            if not math.isfinite(value):
                self.net.load_state_dict(state.best_state)
                raise TrainingError(
                    f"{self.description}: loss became {value} at epoch {epoch}, step {state.result.steps}; the model was "
                    "restored to its last good weights. Lower the learning rate or check the inputs for NaN/inf."
                )
            if i == group_start:
                self.optimizer.zero_grad(set_to_none=True)
            part = loss / in_group if in_group > 1 else loss
            (self.precision.scaler.scale(part) if self.precision.scaler else part).backward()
            total, count = total + value, count + 1
            self.advance(1, loss=total / count)
            if i + 1 < group_start + in_group:
                continue  # more batches add to this step's gradient
            if self._step(state.result, epoch):
                break
        return total, count

    def _loss(self, x: Batch, y: Any) -> Tensor:
        if self.precision.enabled:
            with self.precision.autocast():
                return self.loss_fn(self.model, x, y).float()
        return self.loss_fn(self.model, x, y)

    def _step(self, result: FitResult, epoch: int) -> bool:
        """One optimizer step on the accumulated gradients; True when ``max_steps`` or the time budget ends the epoch."""
        if self.precision.scaler:
            self.precision.scaler.step(self.optimizer)
            self.precision.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.after_step is not None:
            self.after_step(self.net)
        result.steps += 1
        max_steps = self.config.max_steps
        return bool(max_steps and result.steps >= max_steps) or _out_of_time(result, self.description, epoch)


def _sum_over_ranks(total: float, count: int) -> tuple[float, int]:
    """(total, count) summed over torch.distributed ranks; unchanged in a single process."""
    if training_world_size() == 1:
        return total, count
    t = torch.tensor([total, float(count)], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t[0]), int(t[1])


def _out_of_time(result: FitResult, description: str, epoch: int) -> bool:
    """True (once noted on the budget) when the step's ``resources.max_stage_seconds`` ran out."""
    budget = over_time_budget()
    if budget is None:
        return False
    result.stopped_by_time_budget = True
    budget.notes.append(
        f"{description}: stopped in epoch {epoch} after step {result.steps} because resources.max_stage_seconds="
        f"{budget.seconds:g} s ran out; the best weights so far were kept. Raise the limit or lower the epochs."
    )
    return True

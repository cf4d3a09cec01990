"""The one small training loop that teacher training, fine-tuning, distillation and LoRA share.

AdamW + cosine schedule, validation each epoch, early stopping with the best weights kept,
per-epoch checkpoints for ``--resume`` (safetensors + a ``weights_only`` optimizer state, written
as one directory swap so a kill never leaves a mixed checkpoint), a stop with a clear error on a
non-finite loss that keeps the last good checkpoint, and a stop when the step's time budget
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
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.utils.data import DataLoader

from slimtorch.core import Batch, RunContext, seed_everything
from slimtorch.errors import ArtifactError, TrainingError, UnsupportedModuleError
from slimtorch.io import atomic_dir, atomic_write_bytes, atomic_write_json, recover_dir
from slimtorch.resources import over_time_budget
from slimtorch.version import __version__

log = logging.getLogger(__name__)

# loss_fn(model, x, y) -> scalar loss; ``y`` may contain UNLABELED (-1) entries.
LossFn = Callable[[nn.Module, Batch, Tensor], Tensor]

# Bump when the checkpoint layout changes; a checkpoint of another version is refused, not guessed at.
CHECKPOINT_VERSION = 1


class TrainConfig(BaseModel):
    """Optimiser settings shared by every stage that trains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=0, description="passes over the training set")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate (cosine-decayed)")
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int | None = Field(None, gt=0, description="defaults to data.batch_size")
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without a better val metric")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps in total")


@dataclass
class FitResult:
    best_metric: float
    best_epoch: int
    epochs_run: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0
    stopped_by_time_budget: bool = False


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
    """Train ``model`` in place and leave it holding its best weights (by ``evaluate``, higher is better).

    Args:
        loss_fn: ``loss_fn(model, x, y) -> scalar``.
        evaluate: validation metric, called after each epoch; without it the last epoch is kept.
        checkpoint_dir: where per-epoch checkpoints go; if one exists there, training resumes from it.
        after_step: called after every optimizer step (e.g. re-apply pruning masks).
        params: the parameters to train (default: all that require grad).

    Raises:
        TrainingError: the loss became NaN/inf; the model is restored to the last good epoch.
    """
    seed_everything(ctx.seed)
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UnsupportedModuleError(
            f"{description}: {type(model).__name__} has no trainable parameters, so there is nothing to train. "
            "Remove the training stage (or its epochs), or give a model with parameters."
        )
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = max(1, config.epochs * len(loader))
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    result = FitResult(best_metric=-math.inf, best_epoch=-1, epochs_run=0, steps=0)
    best_state = _state_bytes(model)
    start_epoch = 0
    if checkpoint_dir is not None:
        recover_dir(checkpoint_dir / "last")
        recover_dir(checkpoint_dir / "best")
    if checkpoint_dir is not None and (checkpoint_dir / "last" / "meta.json").exists():
        meta = load_checkpoint(checkpoint_dir / "last", model, optimizer, scheduler)
        start_epoch = result.resumed_from_epoch = meta["epoch"] + 1
        result.steps, result.history = meta["steps"], meta["history"]
        result.best_metric, result.best_epoch = meta["best_metric"], meta["best_epoch"]
        if (checkpoint_dir / "best" / "meta.json").exists():
            from safetensors.torch import load_file

            best_state = load_file(str(checkpoint_dir / "best" / "model.safetensors"))
        else:
            best_state = _state_bytes(model)
        log.info("resuming %s at epoch %d", description, start_epoch)
    with ctx.progress(description, config.epochs * len(loader)) as advance:
        advance(start_epoch * len(loader))
        for epoch in range(start_epoch, config.epochs):
            if config.max_steps and result.steps >= config.max_steps:
                break
            # A time budget stops training only after at least one optimizer step (one-time set-up costs
            # such as the optimizer's first import must not leave a stage untrained).
            if result.stopped_by_time_budget or (result.steps > 0 and _out_of_time(result, description, epoch)):
                break
            # Same shuffles and dropout whether or not we resumed: reseed per epoch, loader generator too.
            torch.manual_seed(ctx.seed * 1000 + epoch)
            if getattr(loader, "generator", None) is not None:
                loader.generator.manual_seed(ctx.seed * 1000 + epoch)
            model.train()
            total, count = 0.0, 0
            for x, y in loader:
                loss = loss_fn(model, x, y)
                value = loss.item()  # one host sync per step, used for the check and the running mean
                if not math.isfinite(value):
                    model.load_state_dict(best_state)
                    raise TrainingError(
                        f"{description}: loss became {value} at epoch {epoch}, step {result.steps}; the model was "
                        "restored to its last good weights. Lower the learning rate or check the inputs for NaN/inf."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if after_step is not None:
                    after_step(model)
                result.steps += 1
                total, count = total + value, count + 1
                advance(1, loss=total / count)
                if config.max_steps and result.steps >= config.max_steps:
                    break
                if _out_of_time(result, description, epoch):
                    break
            model.eval()
            metric = evaluate(model) if evaluate is not None else -total / max(count, 1)
            result.history.append({"epoch": epoch, "loss": total / max(count, 1), "val": metric})
            result.epochs_run = epoch + 1
            improved = metric > result.best_metric
            if improved:
                result.best_metric, result.best_epoch = metric, epoch
                best_state = _state_bytes(model)
            if checkpoint_dir is not None:
                meta = {"epoch": epoch, "steps": result.steps, "history": result.history,
                        "best_metric": result.best_metric, "best_epoch": result.best_epoch}
                if improved:
                    save_checkpoint(checkpoint_dir / "best", model, optimizer, scheduler, meta)
                save_checkpoint(checkpoint_dir / "last", model, optimizer, scheduler, meta)
            if config.patience and epoch - result.best_epoch >= config.patience:
                log.info("%s: early stop at epoch %d (best %d)", description, epoch, result.best_epoch)
                break
    model.load_state_dict(best_state)
    model.eval()
    return result


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

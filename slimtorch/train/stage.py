"""``finetune``: plain supervised training on the labeled train split (recovery after compression)."""

from __future__ import annotations

import time

from pydantic import Field
from torch import Tensor, nn

from slimtorch.core import STAGES, Batch, RunContext, StageRecord, forward
from slimtorch.measure.accuracy import task_metric
from slimtorch.train.loop import TrainConfig, convergence_note, fit
from slimtorch.train.losses import labeled_cross_entropy


class FinetuneConfig(TrainConfig):
    """Settings of the ``finetune`` stage (the training settings, with a shorter default)."""

    epochs: int = Field(5, ge=0)


def cross_entropy(model: nn.Module, x: Batch, y: Tensor) -> Tensor:
    """Mean cross-entropy over the labeled rows (transfer-set rows carry UNLABELED and are skipped). -> scalar."""
    return labeled_cross_entropy(forward(model, x), y)


@STAGES.register("finetune")
class FinetuneStage:
    """Fine-tune the model on labels; pruning masks (parametrizations) stay in force while it trains."""

    name = "finetune"
    config_cls = FinetuneConfig

    def __init__(self, config: FinetuneConfig) -> None:
        self.config = config

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        start = time.perf_counter()
        if ctx.data.task != "classification":
            from slimtorch.errors import UnsupportedModuleError

            raise UnsupportedModuleError("finetune trains on class labels; for an embedding model use `distill` (cosine to the teacher) instead.")
        loader = ctx.data.loader("train", self.config.batch_size, shuffle=True, seed=ctx.seed)
        result = fit(
            model, cross_entropy, loader, self.config, ctx,
            evaluate=lambda m: task_metric(m, ctx.data, "val"),
            checkpoint_dir=ctx.stage_dir(self.name), description="finetune",
        )
        record = StageRecord(self.name, self.config.model_dump(), seconds=time.perf_counter() - start)
        record.details = {"best_val": result.best_metric, **result.summary()}
        note = convergence_note(result, "finetune", self.config.min_loss_improvement)
        if note:
            record.notes.append(note)
        return model, record

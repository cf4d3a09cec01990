"""``finetune``: plain supervised training on the labeled train split (recovery after compression)."""

from __future__ import annotations

from torch import nn

from slimtorch.core import RunContext, Stage, StageRecord
from slimtorch.errors import UnsupportedModuleError
from slimtorch.measure.accuracy import task_metric
from slimtorch.train.config import FinetuneConfig
from slimtorch.train.loop import convergence_note, fit
from slimtorch.train.losses import cross_entropy

__all__ = ["FinetuneConfig", "FinetuneStage", "cross_entropy"]  # cross_entropy lives in train.losses


class FinetuneStage(Stage[FinetuneConfig], kind="finetune"):
    """Fine-tune the model on labels; pruning masks (parametrizations) stay in force while it trains."""

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        if ctx.data.task != "classification":
            raise UnsupportedModuleError("finetune trains on class labels; for an embedding model use `distill` (cosine to the teacher) instead.")
        loader = ctx.data.loader("train", self.config.batch_size, shuffle=True, seed=ctx.seed)
        result = fit(
            model, cross_entropy, loader, self.config, ctx,
            evaluate=lambda m: task_metric(m, ctx.data, "val"),
            checkpoint_dir=ctx.stage_dir(self.name), description="finetune",
        )
        record = self.record()
        record.details = {"best_val": result.best_metric, **result.summary()}
        note = convergence_note(result, "finetune", self.config.min_loss_improvement)
        if note:
            record.notes.append(note)
        return model, record

"""The training settings every stage that trains shares: a leaf module (pydantic only), so recipes load without torch code."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from slimtorch.stage_tags import StageConfig, StageTags

Schedule = Literal["constant", "cosine", "onecycle", "plateau"]


class TrainConfig(StageConfig):
    """Optimiser and stopping settings shared by every stage that trains.

    Training runs until it has converged or reaches ``epochs``: it stops when, for ``patience``
    epochs, the validation metric has not improved and the mean training loss has not fallen by more
    than ``min_loss_improvement`` (relative) below its best; the best weights by validation are kept.
    """

    epochs: int = Field(10, ge=0, description="ceiling on passes over the training set; training stops earlier once converged")
    lr: float | Literal["auto"] = Field(1e-3, description="AdamW peak learning rate, or 'auto' for a short range test")
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int | None = Field(None, gt=0, description="defaults to data.batch_size")
    schedule: Schedule = Field("constant", description="constant | cosine | onecycle | plateau (all after a linear warm-up)")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up length, at most a tenth of the ceiling's steps")
    lr_floor: float = Field(0.1, ge=0, le=1, description="cosine/onecycle/plateau never go below lr * lr_floor")
    patience: int | None = Field(10, ge=1, description="stop after this many epochs with neither a better val metric nor a lower "
                                                       "training loss (by min_loss_improvement and at least 1e-4); null: "
                                                       "always run the epochs ceiling")
    min_loss_improvement: float = Field(0.01, ge=0, lt=1, description="relative fall of the epoch training loss that counts as learning")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps in total")
    accumulate: int = Field(1, ge=1, description="batches whose gradients add up to one optimizer step (a bigger effective "
                                                 "batch in the same memory)")

    @field_validator("lr")
    @classmethod
    def _check_lr(cls, value: float | str | None) -> float | str | None:
        if value is not None and value != "auto" and not (isinstance(value, float | int) and value > 0):
            raise ValueError(f"lr must be a positive number or 'auto'; got {value!r}. 1e-3 suits Adam on small models; "
                             "'auto' runs a short learning-rate range test first.")
        return value

    def stage_tags(self) -> StageTags:
        return StageTags(trains=True, backward=True)


class FinetuneConfig(TrainConfig):
    """Settings of the ``finetune`` stage (the training settings, with a shorter default)."""

    epochs: int = Field(5, ge=0)


def train_fields(config: BaseModel) -> dict[str, Any]:
    """The :class:`TrainConfig` fields of a stage config that embeds them (DistillConfig, FinetuneConfig)."""
    return {k: getattr(config, k) for k in TrainConfig.model_fields if hasattr(config, k)}

"""``LoraConfig``: where to attach low-rank adapters and how long to train them."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from slimtorch.stage_tags import StageConfig, StageTags


class LoraConfig(StageConfig):
    """Recipe entry ``- lora: {rank: 8, epochs: 2}``.

    LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685): ``W' = W + (lora_alpha / rank) · B A`` with
    ``A`` (rank, in) and ``B`` (out, rank) trained and ``W`` frozen; merged into ``W`` afterwards.
    """

    rank: int = Field(8, ge=1, description="rank r of the update B·A")
    lora_alpha: float = Field(16.0, gt=0, description="scaling numerator: the update is (lora_alpha / rank)·B·A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input while training")
    target_modules: list[str] | None = Field(
        None, description="module names/suffixes/globs to adapt; default: query/value for HF encoders, else every Linear/Conv"
    )
    epochs: int = Field(2, ge=1, description="passes over the training data (same budget for the full fine-tune)")
    max_steps: int | None = Field(None, ge=1, description="cap on optimizer steps (both runs)")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the adapters")
    batch_size: int | None = Field(None, gt=0, description="defaults to data.batch_size")
    use_teacher: bool = Field(True, description="distil from ctx.teacher when the recipe has one, else train on labels")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the distillation loss")
    # One name for λ across stages (distill, prune, lora); `label_weight` is still read from older recipes.
    alpha: float = Field(0.0, ge=0, le=1, validation_alias=AliasChoices("alpha", "label_weight"),
                         description="λ in λ·CE + (1−λ)·T²·KL when distilling (1 = labels only)")
    keep_sparsity: bool = Field(True, description="re-apply pruning masks to merged weights (the LoRA update is dense)")
    compare_full_finetune: bool = Field(True, description="also fine-tune every weight with the same step budget")
    full_finetune_lr: float = Field(5e-4, gt=0, description="learning rate of the full fine-tune comparison")

    def stage_tags(self) -> StageTags:
        return StageTags(trains=True, backward=True)

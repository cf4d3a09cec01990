"""The shared training loop and the ``finetune`` stage."""

from slimtorch.train.loop import FitResult, LossFn, TrainConfig, fit
from slimtorch.train.stage import FinetuneConfig, FinetuneStage, cross_entropy

__all__ = ["FinetuneConfig", "FinetuneStage", "FitResult", "LossFn", "TrainConfig", "cross_entropy", "fit"]

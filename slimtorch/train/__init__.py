"""The shared training loop, its schedules, the labeled cross-entropy and the ``finetune`` stage."""

from slimtorch.train.loop import FitResult, LossFn, TrainConfig, convergence_note, fit, train_fields
from slimtorch.train.losses import labeled_cross_entropy, labeled_cross_entropy_rows
from slimtorch.train.stage import FinetuneConfig, FinetuneStage, cross_entropy

__all__ = ["FinetuneConfig", "FinetuneStage", "FitResult", "LossFn", "TrainConfig", "convergence_note", "cross_entropy", "fit",
           "labeled_cross_entropy", "labeled_cross_entropy_rows", "train_fields"]

"""The shared training loop."""

from slimtorch.train.loop import FitResult, LossFn, TrainConfig, fit

__all__ = ["FitResult", "LossFn", "TrainConfig", "fit"]

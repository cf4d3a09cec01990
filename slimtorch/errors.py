"""Every exception slimtorch raises on purpose.

Each subclass also inherits the builtin type a caller would expect, so ``except ValueError`` keeps
working (scikit-learn's ``NotFittedError`` does the same).
"""

from __future__ import annotations


class SlimtorchError(Exception):
    """Base class of all slimtorch errors; the message says what was wrong and how to fix it."""


class RecipeError(SlimtorchError, ValueError):
    """A recipe (YAML file or config object) is malformed or has an invalid value."""


class SizeTargetError(RecipeError):
    """A size target (GGUF ``size_mb``/``bits_per_weight``) is below what the cheapest storage types need."""


class DataError(SlimtorchError, ValueError):
    """A dataset is missing, empty, or has inputs/labels that cannot be used."""


class ModelRefError(SlimtorchError, ValueError):
    """A model reference (built-in name, ``module:function``, ``hf:``, directory) cannot be resolved."""


class ArtifactError(SlimtorchError, ValueError):
    """A saved model directory or checkpoint is missing, corrupted or from an incompatible version."""


class UnsupportedModuleError(SlimtorchError, TypeError):
    """A model or layer cannot be handled by the requested method (e.g. int4 on a model with no Linear)."""


class ShapeMismatchError(SlimtorchError, ValueError):
    """Two models that must agree (teacher/student, original/compressed) produce different shapes."""


class NotCalibratedError(SlimtorchError, RuntimeError):
    """A method that needs calibration data was used before it saw any."""


class TrainingError(SlimtorchError, RuntimeError):
    """Training failed in a way the user must act on (e.g. a non-finite loss)."""


class OutputDirError(SlimtorchError, ValueError):
    """The output directory exists (without --resume/--force) or cannot be written."""


class MissingExtraError(SlimtorchError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class TrackingError(SlimtorchError, RuntimeError):
    """An experiment tracker (MLflow, TensorBoard, Weights & Biases) could not start or log a run."""

"""Experiment tracking: a finished run's recipe, training curves, measured figures and report files logged to
MLflow, TensorBoard or Weights & Biases through each tool's own client (``tracking:`` in a recipe, ``--track``).

The recipe block is :class:`TrackingConfig` (a leaf the recipe imports); what is logged is
:mod:`slimtorch.track.log_run`; one private adapter per tool (``_mlflow``, ``_tensorboard``, ``_wandb``).

Example:
    >>> slimtorch.compress({..., "tracking": {"mlflow": {}}}, out="runs/r")  # doctest: +SKIP
    >>> # runs/r/mlflow/mlflow.db: `mlflow ui --backend-store-uri sqlite:///runs/r/mlflow/mlflow.db`
"""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
    from slimtorch.track.base import Tracker, Trackers
    from slimtorch.track.config import MLflowConfig, TensorBoardConfig, TrackingConfig, WandbConfig

# imported on first use, so the recipe schema loading the config leaf does not load the trackers
_EXPORTS = {
    "Tracker": "slimtorch.track.base", "Trackers": "slimtorch.track.base",
    **{name: "slimtorch.track.config" for name in ("MLflowConfig", "TensorBoardConfig", "TrackingConfig", "WandbConfig")},
}
__all__ = ["MLflowConfig", "TensorBoardConfig", "Tracker", "Trackers", "TrackingConfig", "WandbConfig"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

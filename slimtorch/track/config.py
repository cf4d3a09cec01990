"""The recipe's ``tracking:`` block: which experiment tracker a run is logged to, and where.

Every default stays on this machine: MLflow writes a local SQLite store under the run's output directory,
TensorBoard writes event files there, and Weights & Biases runs offline. A server is contacted only when the
recipe names one (``mlflow: {tracking_uri: http://...}``, ``wandb: {mode: online}``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BACKENDS = ("mlflow", "tensorboard", "wandb")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MLflowConfig(_Strict):
    """Log to MLflow through its client (``mlflow.tracking.MlflowClient``)."""

    tracking_uri: str | None = Field(None, description="an MLflow store or server; default: sqlite:///OUT/mlflow/mlflow.db (local)")
    experiment: str | None = Field(None, description="experiment name (default: the recipe's name)")
    run_name: str | None = Field(None, description="default: the recipe's name")


class TensorBoardConfig(_Strict):
    """Write TensorBoard event files (``torch.utils.tensorboard.SummaryWriter``)."""

    log_dir: str | None = Field(None, description="default: OUT/tensorboard (view with `tensorboard --logdir OUT/tensorboard`)")


class WandbConfig(_Strict):
    """Log to Weights & Biases (``wandb.init``); offline unless ``mode: online``."""

    project: str | None = Field(None, description="default: the recipe's name")
    entity: str | None = None
    mode: Literal["offline", "online"] = Field("offline", description="offline: files under OUT/wandb, upload later with `wandb sync`")
    dir: str | None = Field(None, description="default: OUT (runs go to OUT/wandb/)")


class TrackingConfig(_Strict):
    """``tracking: {mlflow: {...}}``, ``{tensorboard: {...}}`` or ``{wandb: {...}}`` (several may be given)."""

    mlflow: MLflowConfig | None = None
    tensorboard: TensorBoardConfig | None = None
    wandb: WandbConfig | None = None

    @model_validator(mode="after")
    def _one_at_least(self) -> TrackingConfig:
        if self.mlflow is None and self.tensorboard is None and self.wandb is None:
            raise ValueError("tracking names no tracker; give one of mlflow, tensorboard or wandb, e.g. `tracking: {mlflow: {}}`")
        return self

    @classmethod
    def of(cls, backend: str) -> TrackingConfig:
        """The default settings of one backend (the CLI's ``--track mlflow``).

        Raises:
            ValueError: ``backend`` is not one of :data:`BACKENDS`.
        """
        if backend not in BACKENDS:
            raise ValueError(f"--track must be one of {', '.join(BACKENDS)}; got {backend!r}.")
        return cls.model_validate({backend: {}})

    def merged(self, other: TrackingConfig) -> TrackingConfig:
        """These settings plus the backends only ``other`` names (a recipe's own settings win)."""
        return TrackingConfig.model_validate({name: getattr(self, name) or getattr(other, name) for name in BACKENDS})

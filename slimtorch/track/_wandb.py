"""Weights & Biases adapter: ``wandb.init`` in offline mode by default (files under ``OUT/wandb``, ``wandb sync`` uploads).

A sweep's variants are runs of one W&B group (the sweep's name), W&B's way to show related runs together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimtorch.errors import MissingExtraError
from slimtorch.track.config import WandbConfig


def _wandb() -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise MissingExtraError(f"tracking: {{wandb: ...}} needs Weights & Biases: pip install 'slimtorch[wandb]'; {exc}.") from exc
    return wandb


class WandbTracker:
    """One W&B run."""

    def __init__(self, config: WandbConfig, out: Path, name: str, *, group: str | None = None) -> None:
        self.config, self.out, self.name = config, out, name
        self.wandb = _wandb()
        where = Path(config.dir) if config.dir else out
        where.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(project=config.project or name, entity=config.entity, mode=config.mode, dir=str(where),
                                   name=name, group=group, reinit="create_new",
                                   settings=self.wandb.Settings(silent=True, console="off", x_disable_stats=True))
        self.where = f"W&B run {self.run.id} ({config.mode}) in {self.run.dir}"
        self.curves: set[str] = set()
        self.files: dict[str, list[Path]] = {}  # one W&B artifact per folder, logged at finish

    def log_params(self, params: dict[str, str]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step is None:
            self.run.summary.update(metrics)
            return
        # each training curve has its own epoch axis (W&B's own step must only grow across the whole run)
        curves: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            curves.setdefault(key.rsplit("/", 1)[0], {})[key] = value
        for curve, values in curves.items():
            axis = f"{curve}/epoch"
            if axis not in self.curves:
                self.run.define_metric(axis, hidden=True)
                self.run.define_metric(f"{curve}/*", step_metric=axis)
                self.curves.add(axis)
            self.run.log({**values, axis: step})

    def log_artifact(self, path: Path, folder: str) -> None:
        if path.suffix == ".png":
            self.run.log({f"{folder}/{path.stem}" if folder else path.stem: self.wandb.Image(str(path))})
        self.files.setdefault(folder or "files", []).append(path)

    def child(self, name: str) -> WandbTracker:
        return WandbTracker(self.config, self.out, name, group=self.name)

    def finish(self, failed: bool = False) -> None:
        for folder, paths in self.files.items():
            artifact = self.wandb.Artifact(name=f"{self.run.id}-{folder}", type=folder)
            for path in paths:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=1 if failed else 0)

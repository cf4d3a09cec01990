"""MLflow adapter: runs, params, metrics and artifacts through ``mlflow.tracking.MlflowClient``.

The default store is a local SQLite file (MLflow's recommended local backend) with artifacts beside it, both
under ``OUT/mlflow``: nothing is contacted unless ``tracking_uri`` names a server.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from slimtorch.errors import MissingExtraError
from slimtorch.logs import quiet_after_import
from slimtorch.track.config import MLflowConfig

# MLflow takes at most this many params or metrics in one log_batch call
BATCH = 100


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise MissingExtraError("tracking: {mlflow: ...} needs MLflow: pip install 'slimtorch[mlflow]' "
                                f"(mlflow-skinny, SQLAlchemy, alembic); {exc}.") from exc
    quiet_after_import("mlflow")  # MLflow sets its logger to INFO when imported: "Creating initial MLflow database tables..."
    return MlflowClient(tracking_uri=uri)


def default_uri(out: Path) -> str:
    """``sqlite:///OUT/mlflow/mlflow.db`` (absolute): the local store a run writes when no URI is given."""
    return f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}"


class MLflowTracker:
    """One MLflow run; :meth:`child` opens a nested run (tag ``mlflow.parentRunId``), as MLflow's UI groups them."""

    client: Any
    experiment_id: str
    uri: str

    def __init__(self, config: MLflowConfig, out: Path, name: str, *, _parent: MLflowTracker | None = None) -> None:
        if _parent is not None:
            self.client, self.experiment_id, self.uri = _parent.client, _parent.experiment_id, _parent.uri
            tags = {"mlflow.parentRunId": _parent.run_id, "mlflow.runName": name}
        else:
            self.uri = config.tracking_uri or default_uri(out)
            if config.tracking_uri is None:
                (out / "mlflow").mkdir(parents=True, exist_ok=True)
            self.client = _client(self.uri)
            self.experiment_id = self._experiment(config.experiment or name, None if config.tracking_uri else out / "mlflow" / "artifacts")
            tags = {"mlflow.runName": config.run_name or name}
        self.run_id: str = self.client.create_run(self.experiment_id, run_name=tags["mlflow.runName"], tags=tags).info.run_id
        self.where = f"MLflow run {self.run_id} in {self.uri}"

    def _experiment(self, name: str, artifacts: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = artifacts.resolve().as_uri() if artifacts is not None else None
        return str(self.client.create_experiment(name, artifact_location=location))

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + BATCH])

    def log_artifact(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def child(self, name: str) -> MLflowTracker:
        return MLflowTracker(MLflowConfig(), Path("."), name, _parent=self)

    def finish(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

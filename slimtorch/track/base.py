"""What every tracker adapter does: one small protocol, one implementation per tool."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    """One run in an experiment tracker.

    Metric names use ``/`` to group (``model/1_distill/accuracy``, ``curve/teacher/loss``); ``step`` is the epoch
    of a training curve and None for one-off figures. ``where`` says where the run was logged (for the user).
    """

    where: str

    def log_params(self, params: dict[str, str]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path, folder: str) -> None:
        """Attach a file (a report, a plot) under ``folder``."""

    def child(self, name: str) -> Tracker:
        """A nested run (one sweep variant); the caller finishes it."""

    def finish(self, failed: bool = False) -> None: ...


class Trackers:
    """Several trackers behind one :class:`Tracker` (a recipe may name more than one)."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers
        self.where = "; ".join(t.where for t in trackers)

    def log_params(self, params: dict[str, str]) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def log_artifact(self, path: Path, folder: str) -> None:
        for t in self.trackers:
            t.log_artifact(path, folder)

    def child(self, name: str) -> Trackers:
        return Trackers([t.child(name) for t in self.trackers])

    def finish(self, failed: bool = False) -> None:
        for t in self.trackers:
            t.finish(failed)

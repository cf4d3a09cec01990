"""What ``--resume`` knows: fingerprints of recipe parts, ``state.json`` and the epoch-checkpoint folders.

Each finished step (a teacher, the plan, a stage) is stored in ``OUT/state.json`` under its name as one
:class:`StepEntry`, with a fingerprint of every recipe part it depends on. A resumed run reuses a step
only when its fingerprint is unchanged; a changed step makes every later step stale.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimtorch.errors import OutputDirError
from slimtorch.io import atomic_write_json, atomic_write_text, read_json
from slimtorch.version import __version__

STATE_FILE = "state.json"
MAX_STATE_BYTES = 64_000_000  # one entry per finished step, each a few kB


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts`` (dict key order does not matter)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim_work_dir(path: Path, step_fingerprint: str) -> None:
    """Epoch checkpoints in ``path`` may only resume the same computation: clear them if it changed."""
    marker = path / "FINGERPRINT"
    if path.exists() and (not marker.exists() or marker.read_text() != step_fingerprint):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, step_fingerprint)


@dataclass
class StepEntry:
    """One finished step in ``state.json`` (teachers, the plan and stages alike).

    Attributes:
        fingerprint: the fingerprint of the recipe parts it was computed from.
        row: its report row (a stage's record, a teacher's training); None when it has none.
        measurements: the measurements of the models it saved, its own first (``Measurement.to_json``).
        evaluate: the fingerprint of the ``evaluate`` settings they were measured with.
        output: what else it made (the plan).
    """

    fingerprint: str
    row: dict[str, Any] | None = None
    measurements: list[dict[str, Any]] = field(default_factory=list)
    evaluate: str | None = None
    output: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "row": self.row, "measurements": self.measurements,
                "evaluate": self.evaluate, "output": self.output}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> StepEntry:
        """Read an entry, also in the earlier layout (a teacher's single ``measurement``, the plan's ``plan``)."""
        measurements = entry.get("measurements")
        if measurements is None:
            measurements = [entry["measurement"]] if isinstance(entry.get("measurement"), dict) else []
        return cls(fingerprint=str(entry.get("fingerprint")), row=entry.get("row"), measurements=list(measurements),
                   evaluate=entry.get("evaluate"), output=entry.get("output", entry.get("plan")))


class ResumeState:
    """``state.json``: finished steps keyed by name, each with the fingerprint it was computed for.

    Raises:
        OutputDirError: (on ``resume``) the file exists but cannot be read as a state file.
    """

    def __init__(self, out: Path, resume: bool) -> None:
        self.path = out / STATE_FILE
        self.steps: dict[str, dict[str, Any]] = {}
        if resume and self.path.exists():
            data = read_json(self.path, MAX_STATE_BYTES, OutputDirError, "use --force to start the run again")
            steps = data.get("steps") if isinstance(data, dict) else None
            if not isinstance(steps, dict) or not all(isinstance(v, dict) for v in steps.values()):
                raise OutputDirError(f"{self.path} is corrupted ('steps' must map step names to objects); use --force to start the run again.")
            self.steps = steps

    def done(self, name: str, step_fingerprint: str) -> StepEntry | None:
        """The stored entry of step ``name`` if it finished for this fingerprint, else None."""
        step = self.steps.get(name)
        return StepEntry.from_json(step) if step and step.get("fingerprint") == step_fingerprint else None

    def invalidate_after(self, name: str) -> None:
        """A changed step makes every later step stale (it and the steps stored after it are dropped)."""
        names = list(self.steps)
        if name in names:
            for later in names[names.index(name):]:
                self.steps.pop(later)

    def save(self, name: str, entry: StepEntry) -> None:
        """Record step ``name`` as finished and write the file atomically."""
        self.steps[name] = entry.to_json()
        atomic_write_json(self.path, {"slimtorch_version": __version__, "steps": self.steps})

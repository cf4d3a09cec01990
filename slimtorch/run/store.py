"""Where a run keeps its models: ``OUT/models/<name>/`` saved, measured, reloaded and reused on resume.

Every model of a run (teachers, each stage's output, the intermediate models a stage reports) goes
through :meth:`RunStore.save_and_measure`, so each one is saved and measured by the same code and
appears once in :attr:`RunStore.measurements`, in run order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from slimtorch import artifact
from slimtorch.data import DataBundle
from slimtorch.errors import ArtifactError
from slimtorch.measure import Measurement, measure
from slimtorch.measure.config import EvaluateConfig
from slimtorch.measure.llm import LLMReference, causal_lm_of
from slimtorch.measure.runner import retime_side_by_side
from slimtorch.models.model_card import refresh_card
from slimtorch.prune.masks import masks_from_zeros, rearm_masks_
from slimtorch.run.resume import ResumeState, fingerprint


class RunStore:
    """The saved models of one run, their measurements, and the resume state that lists them.

    Args:
        out: the run's output directory (models go to ``out/models/<name>``).
        data: the run's data (measurements and artifact metadata).
        evaluate: how models are measured; a plan may widen it later (:attr:`evaluate` is public).
        state: ``state.json`` of the run.
        trusted_refs: the (factory, args) calls the recipe makes (:func:`trusted_calls`); a saved model may be
            rebuilt with these only.
        events: called with one-line status messages.
        device: where the run trains; ``evaluate.device: auto`` measures there too.
    """

    def __init__(self, out: Path, data: DataBundle, evaluate: EvaluateConfig, state: ResumeState,
                 trusted_refs: frozenset[tuple[str, str]], events: Callable[[str], None], device: torch.device | None = None) -> None:
        self.out, self.data, self.evaluate, self.state = out, data, evaluate, state
        self.trusted_refs, self.events = trusted_refs, events
        self.device = device if device is not None else torch.device("cpu")
        self.measurements: list[Measurement] = []
        # The first teacher's outputs: every later model's agreement is measured against them.
        self.baseline_outputs: Tensor | LLMReference | None = None
        # Measurements depend on `evaluate` only: when it alone changed, finished models are measured again.
        # Taken from the recipe's own settings, before a plan widens them, so a resumed plan run matches.
        self.evaluate_fingerprint = fingerprint(evaluate.model_dump())

    def model_dir(self, name: str) -> Path:
        return self.out / "models" / name

    # -- save and measure -----------------------------------------------------------------------
    def save_and_measure(self, model: nn.Module, name: str, stage: str) -> Measurement:
        """Save ``model`` as ``models/<name>`` (with the data's task facts) and measure it."""
        artifact.save(model, self.model_dir(name), task=self.data.task, num_classes=self.data.num_classes,
                      input_shape=list(self.data.input_shape) if self.data.input_shape else None)
        measured = self.measure(model, name, stage)
        refresh_card(self.model_dir(name), model, stage, measured)  # an HF model's README.md gets the measured figures
        return measured

    def measure(self, model: nn.Module, name: str, stage: str) -> Measurement:
        """Measure a saved model and append it to :attr:`measurements`."""
        # Latency is timed for all models together at the end (retime); causal LMs keep their own decode timings.
        m = measure(model, name=name, stage=stage, data=self.data, config=self.evaluate,
                    artifact_dir=self.model_dir(name), baseline_outputs=self.baseline_outputs,
                    time_now=causal_lm_of(model) is not None, device=self.device)
        self.measurements.append(m)
        return m

    def retime(self) -> None:
        """Time every model of the run side by side in interleaved rounds (ratios free of machine drift)."""
        pairs = [(m, self.load(m.name)) for m in self.measurements if not m.llm]
        if pairs:
            self.events(f"timing {len(pairs)} models side by side")
            retime_side_by_side(pairs, self.data, self.evaluate)

    # -- reload and reuse -----------------------------------------------------------------------
    def load(self, name: str) -> nn.Module:
        return artifact.load(self.model_dir(name), trusted_refs=self.trusted_refs)

    def load_stage_model(self, name: str) -> nn.Module:
        """Reload a finished stage's model, re-arming pruning masks so later training keeps them."""
        model = self.load(name)
        masked = artifact.read_spec(self.model_dir(name)).get("masked_modules") or []
        if masked:
            # A weight that is exactly zero in a masked layer was masked: restore the mask from it.
            rearm_masks_(model, masks_from_zeros(model, masked))
        return model

    def reuse(self, name: str, done: dict[str, Any] | None, load: Callable[[str], nn.Module]) -> nn.Module | None:
        """The finished model of step ``name``, or None when it must run (again): not done, or damaged on disk."""
        if not done:
            return None
        try:
            model = load(name)
            for m in done.get("measurements", [])[1:]:  # the extra models a stage reported
                artifact.read_spec(self.model_dir(m["name"]))
            return model
        except ArtifactError as exc:
            self.events(f"{name}: the finished model on disk is damaged ({exc}); running the step again")
            return None

    def remeasure(self, done: dict[str, Any], first: nn.Module) -> list[Measurement]:
        """Measure finished models again (the recipe's `evaluate` changed since they were measured)."""
        old = [Measurement.from_json(m) for m in (done.get("measurements") or [done["measurement"]])]
        self.events(f"{old[0].name}: evaluate settings changed; measuring the finished model again")
        return [self.measure(first if i == 0 else self.load(m.name), m.name, m.stage) for i, m in enumerate(old)]

    def is_measured_now(self, done: dict[str, Any]) -> bool:
        """Whether a finished step's measurements were taken with today's `evaluate` settings."""
        return done.get("evaluate") == self.evaluate_fingerprint


def model_refs(tree: Any) -> frozenset[str]:
    """Every string under a ``model:`` key of a recipe dict (teachers, student, assistants)."""
    found: set[str] = set()
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "model" and isinstance(value, str):
                found.add(value)
            else:
                found |= model_refs(value)
    elif isinstance(tree, list):
        for item in tree:
            found |= model_refs(item)
    return frozenset(found)


def trusted_calls(tree: Any) -> frozenset[tuple[str, str]]:
    """Every ``(model, args)`` call a recipe dict names, as :func:`slimtorch.artifact.trusted_call` pairs.

    A resumed run may rebuild a saved model only through a call its recipe makes itself: the function
    and its arguments, never the function with arguments from the (editable) saved spec.
    """
    found: set[tuple[str, str]] = set()
    if isinstance(tree, dict):
        if isinstance(tree.get("model"), str):
            args = tree.get("args")
            found.add(artifact.trusted_call(tree["model"], args if isinstance(args, dict) else None))
        for key, value in tree.items():
            if not (key == "model" and isinstance(value, str)):
                found |= trusted_calls(value)
    elif isinstance(tree, list):
        for item in tree:
            found |= trusted_calls(item)
    return frozenset(found)

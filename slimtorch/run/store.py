"""Where a run keeps its models: ``OUT/models/<name>/`` saved, measured, reloaded and reused on resume.

Every model of a run (teachers, each stage's output, the intermediate models a stage reports) goes
through :meth:`RunStore.finish` (or, reused on resume, :meth:`RunStore.adopt`), so each one is saved and
measured by the same code and appears once in :attr:`RunStore.measurements`, in run order. The store's
lists change through its methods only.
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
from slimtorch.measure import Measurement, measure, outputs_on
from slimtorch.measure.config import EvaluateConfig
from slimtorch.measure.llm import LLMReference, causal_lm_of
from slimtorch.measure.runner import retime_side_by_side
from slimtorch.models.model_card import refresh_card
from slimtorch.prune.masks import masks_from_zeros, rearm_masks_
from slimtorch.run.resume import ResumeState, StepEntry, fingerprint


class RunStore:
    """The saved models of one run, their measurements, and the resume state that lists them.

    Args:
        out: the run's output directory (models go to ``out/models/<name>``).
        data: the run's data (measurements and artifact metadata).
        evaluate: how models are measured; a plan may widen it later (:meth:`widen_evaluate`).
        state: ``state.json`` of the run.
        trusted_refs: the (factory, args) calls the recipe makes (:func:`trusted_calls`); a saved model may be
            rebuilt with these only.
        events: called with one-line status messages.
        device: where the run trains; ``evaluate.device: auto`` measures there too.
    """

    def __init__(self, out: Path, data: DataBundle, evaluate: EvaluateConfig, state: ResumeState,
                 trusted_refs: frozenset[tuple[str, str]], events: Callable[[str], None], device: torch.device | None = None) -> None:
        self.out, self.data, self._state = out, data, state
        self.trusted_refs, self.events = trusted_refs, events
        self.device = device if device is not None else torch.device("cpu")
        self._evaluate = evaluate
        self._measurements: list[Measurement] = []
        # The first teacher's outputs: every later model's agreement is measured against them.
        self._baseline_outputs: Tensor | LLMReference | None = None
        # Measurements depend on `evaluate` only: when it alone changed, finished models are measured again.
        # Taken from the recipe's own settings, before a plan widens them, so a resumed plan run matches.
        self._evaluate_fingerprint = fingerprint(evaluate.model_dump())

    @property
    def measurements(self) -> list[Measurement]:
        """Every model of the run measured so far, in run order (a copy: the store alone adds to it)."""
        return list(self._measurements)

    @property
    def state(self) -> ResumeState:
        """``state.json`` of the run (read it; the store records finished steps)."""
        return self._state

    @property
    def evaluate(self) -> EvaluateConfig:
        return self._evaluate

    def widen_evaluate(self, evaluate: EvaluateConfig) -> None:
        """Measure later models with ``evaluate`` (a plan adds its target's batch size); reuse still compares the recipe's."""
        self._evaluate = evaluate

    def set_baseline(self, model: nn.Module) -> None:
        """Measure every later model's agreement against ``model``'s outputs (the first teacher's)."""
        self._baseline_outputs = outputs_on(model, self.data, self._evaluate)

    def model_dir(self, name: str) -> Path:
        return self.out / "models" / name

    def on_cpu(self, model: nn.Module) -> nn.Module:
        """Artifacts are saved, and the report measured, from the CPU (device-neutral); a no-op on CPU runs."""
        return model.to("cpu") if self.device.type != "cpu" else model

    # -- finished steps ---------------------------------------------------------------------------
    def finished(self, name: str, step_fingerprint: str,
                 load: Callable[[str], nn.Module] | None) -> tuple[nn.Module | None, StepEntry] | None:
        """Step ``name``'s finished model (None for a step that saves none) and entry; None when it must run (again)."""
        done = self._state.done(name, step_fingerprint)
        if done is None:
            return None
        if load is None:
            return None, done
        model = self._reuse(name, done, load)
        return None if model is None else (model, done)

    def invalidate_from(self, name: str) -> None:
        """Step ``name`` runs again: it and every step stored after it are stale."""
        self._state.invalidate_after(name)

    def adopt(self, name: str, done: StepEntry, model: nn.Module | None) -> None:
        """Take a reused step's measurements into the run, measuring again if `evaluate` changed since."""
        if done.measurements and model is not None and not self._is_measured_now(done):
            done.measurements = [m.to_json() for m in self._remeasure(done, model)]
            done.evaluate = self._evaluate_fingerprint
            self._state.save(name, done)
        else:
            self._measurements.extend(Measurement.from_json(m) for m in done.measurements)

    def finish(self, name: str, entry: StepEntry, model: nn.Module | None, extras: list[tuple[str, nn.Module]],
               stage: str) -> None:
        """Save and measure a step's model (as ``name``) and the extra models it reported; mark it finished."""
        if model is not None:
            measured = [self._save_and_measure(model, name, stage)]
            for extra_name, extra in extras:
                measured.append(self._save_and_measure(self.on_cpu(extra), f"{name}_{extra_name}", stage))
            entry.measurements = [m.to_json() for m in measured]
            entry.evaluate = self._evaluate_fingerprint
        self._state.save(name, entry)

    # -- save and measure -----------------------------------------------------------------------
    def _save_and_measure(self, model: nn.Module, name: str, stage: str) -> Measurement:
        """Save ``model`` as ``models/<name>`` (with the data's task facts) and measure it."""
        artifact.save(model, self.model_dir(name), task=self.data.task, num_classes=self.data.num_classes,
                      input_shape=list(self.data.input_shape) if self.data.input_shape else None)
        measured = self._measure(model, name, stage)
        refresh_card(self.model_dir(name), model, stage, measured)  # an HF model's README.md gets the measured figures
        return measured

    def _measure(self, model: nn.Module, name: str, stage: str) -> Measurement:
        """Measure a saved model and append it to :attr:`measurements`."""
        # Latency is timed for all models together at the end (retime); causal LMs keep their own decode timings.
        m = measure(model, name=name, stage=stage, data=self.data, config=self._evaluate,
                    artifact_dir=self.model_dir(name), baseline_outputs=self._baseline_outputs,
                    time_now=causal_lm_of(model) is not None, device=self.device)
        self._measurements.append(m)
        return m

    def retime(self) -> None:
        """Time every model of the run side by side in interleaved rounds (ratios free of machine drift)."""
        pairs = [(m, self.load(m.name)) for m in self._measurements if m.llm is None]
        if pairs:
            self.events(f"timing {len(pairs)} models side by side")
            retime_side_by_side(pairs, self.data, self._evaluate)

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

    def _reuse(self, name: str, done: StepEntry, load: Callable[[str], nn.Module]) -> nn.Module | None:
        """The finished model of step ``name``, or None when it must run again (damaged on disk)."""
        try:
            model = load(name)
            for m in done.measurements[1:]:  # the extra models a stage reported
                artifact.read_spec(self.model_dir(m["name"]))
            return model
        except ArtifactError as exc:
            self.events(f"{name}: the finished model on disk is damaged ({exc}); running the step again")
            return None

    def _remeasure(self, done: StepEntry, first: nn.Module) -> list[Measurement]:
        """Measure finished models again (the recipe's `evaluate` changed since they were measured)."""
        old = [Measurement.from_json(m) for m in done.measurements]
        self.events(f"{old[0].name}: evaluate settings changed; measuring the finished model again")
        return [self._measure(first if i == 0 else self.load(m.name), m.name, m.stage) for i, m in enumerate(old)]

    def _is_measured_now(self, done: StepEntry) -> bool:
        """Whether a finished step's measurements were taken with today's `evaluate` settings."""
        return done.evaluate == self._evaluate_fingerprint


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

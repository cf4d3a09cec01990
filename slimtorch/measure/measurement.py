"""The :class:`Measurement` of one model: what the report card shows, all measured, none estimated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from slimtorch.errors import ArtifactError


def primary_metric(metrics: dict[str, Any] | None) -> tuple[str, float | None]:
    """The one headline metric of a model (higher is better): accuracy for classifiers, cosine to the
    original for encoders. Every table, the sweep's choice and the planner's floor use this."""
    for key in ("accuracy", "cosine"):
        value = (metrics or {}).get(key)
        if value is not None:
            return key, float(value)
    return "accuracy", None


@dataclass
class Measurement:
    """Everything measured about one model.

    Attributes:
        name, stage: model name in the report and the stage that produced it.
        params: parameter count; nonzero_params: parameters that are not zero (masks count as zeros).
        size_bytes: bytes on disk of the saved artifact directory (None when not saved).
        compressed_bytes: bytes of the artifact's weight files after zlib — where unstructured
            sparsity shows up, since dense formats store zeros at full width.
        macs: multiply-accumulates of one forward pass on ONE example (batch 1); None if not countable.
        runtime, threads: what ran the timed forward passes (``torch`` or ``onnxruntime``) and on how
            many intra-op threads.
        device: where the model was measured (``cpu``, ``cuda:0``, ...; see ``evaluate.device``).
        peak_memory_bytes: on a GPU, the peak memory the model's measurement allocated (weights moved
            there, activations of the largest batch); None on the CPU.
        latency_ms: ``{"<batch>": {"p50", "p90", "mean", "std", "min", "repeats"}}`` in milliseconds.
        metrics: ``accuracy`` and ``per_class_accuracy`` (classification) or ``cosine`` (embedding).
        agreement: argmax agreement with the baseline (classification) or mean cosine (embedding).
        robustness: ``{"noise_<level>": metric}`` under Gaussian input noise of std ``level × input std``.
        notes: honest caveats found while measuring; seconds: how long the measurement took.
        cost_s: seconds per part of the measurement (params, size, macs, latency, accuracy, robustness).
        decode_tokens_per_s: causal LMs: ``{"<batch>": tokens/s}`` of greedy decoding with the KV cache.
        llm: causal LMs: ``prefill_ms`` (batch 1; p50/p90/...), ``samples`` (prompt → greedy continuation) and
            ``setup`` (window, stride, scored tokens); their ``metrics`` hold ``perplexity``, ``nll``,
            ``token_agreement`` and ``kl_to_original`` (see :mod:`slimtorch.measure.llm`).
        energy: joules per call and per example from the machine's counter, timed in the interleaved latency rounds
            (``counter``, ``measured``, ``notes``; ``estimated`` with its ``method`` only when asked; see
            :mod:`slimtorch.measure.energy`); empty when not timed side by side or ``evaluate.energy.mode: off``.
    """

    name: str
    stage: str
    params: int
    nonzero_params: int
    size_bytes: int | None
    compressed_bytes: int | None
    macs: int | None
    runtime: str
    threads: int
    latency_ms: dict[str, dict[str, float]]
    metrics: dict[str, Any]
    agreement: float | None
    robustness: dict[str, float]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cost_s: dict[str, float] = field(default_factory=dict)
    decode_tokens_per_s: dict[str, float] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    peak_memory_bytes: int | None = None
    energy: dict[str, Any] = field(default_factory=dict)

    @property
    def primary_metric(self) -> tuple[str, float | None]:
        """``("accuracy", value)`` for classifiers, ``("cosine", value)`` for encoders."""
        return primary_metric(self.metrics)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Measurement:
        """Rebuild from :meth:`to_json` output; unknown keys are ignored, missing required ones raise."""
        if not isinstance(d, dict):
            raise ArtifactError(f"a model entry in the report must be an object; got {type(d).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - d.keys())
        if missing:
            raise ArtifactError(
                f"model entry {d.get('name', '?')!r} in the report lacks {', '.join(missing)}; "
                "the report is corrupted or from another tool. Re-run the measurement to rebuild it."
            )
        return cls(**{k: v for k, v in d.items() if k in names})

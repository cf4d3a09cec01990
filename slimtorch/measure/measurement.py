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


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class LatencyStats:
    """One timed batch size in milliseconds (``latency_ms["<batch>"]`` in report.json).

    ``p10`` is None in reports written before side-by-side timing; ``mean``/``std``/``min``/``repeats`` may be absent
    from hand-made entries.
    """

    p50: float
    p90: float
    p10: float | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    repeats: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LatencyStats:
        repeats = d.get("repeats")
        return cls(p50=float(d["p50"]), p90=float(d["p90"]), p10=_float(d.get("p10")), mean=_float(d.get("mean")),
                   std=_float(d.get("std")), min=_float(d.get("min")), repeats=int(repeats) if repeats is not None else None)


@dataclass(frozen=True)
class LLMSetup:
    """How a causal LM was scored and timed (``llm["setup"]``); None where an entry lacks a figure."""

    scored_tokens: int | None = None
    window: int | None = None
    stride: int | None = None
    split: str = "test"
    prefill_tokens: int | None = None
    decode_new_tokens: int | None = None
    decode: str = "eager"


@dataclass(frozen=True)
class LlamaCppThreads:
    """llama.cpp's speed at one thread count."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float


@dataclass(frozen=True)
class LlamaCppFacts:
    """A GGUF model as llama.cpp ran it (``llm["llamacpp"]``): its perplexity and speed per thread count, or why it was skipped."""

    skipped: str | None = None
    perplexity: float | None = None
    threads: dict[str, LlamaCppThreads] = field(default_factory=dict)
    llama_cpp: str = "?"
    prefill_tokens: int | None = None
    decode_new_tokens: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LlamaCppFacts:
        threads = {str(t): LlamaCppThreads(float(v["prefill_tokens_per_s"]), float(v["decode_tokens_per_s"]))
                   for t, v in (d.get("threads") or {}).items()}
        return cls(skipped=d.get("skipped"), perplexity=_float(d.get("perplexity")), threads=threads,
                   llama_cpp=str(d.get("llama_cpp", "?")), prefill_tokens=d.get("prefill_tokens"),
                   decode_new_tokens=d.get("decode_new_tokens"))


@dataclass(frozen=True)
class LLMFacts:
    """A causal LM's facts beyond its metrics (``llm`` in report.json), typed for the renderers."""

    setup: LLMSetup = field(default_factory=LLMSetup)
    prefill_ms: LatencyStats | None = None
    samples: dict[str, str] = field(default_factory=dict)
    compile_s: dict[str, float] = field(default_factory=dict)
    decode_eager_tokens_per_s: dict[str, float] = field(default_factory=dict)
    llamacpp: LlamaCppFacts | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LLMFacts:
        setup = d.get("setup") or {}
        known = {f.name for f in dataclasses.fields(LLMSetup)}
        prefill = d.get("prefill_ms") or {}
        llamacpp = d.get("llamacpp")
        return cls(
            setup=LLMSetup(**{k: v for k, v in setup.items() if k in known}),
            prefill_ms=LatencyStats.from_json(prefill) if "p50" in prefill and "p90" in prefill else None,
            samples={str(k): str(v) for k, v in (d.get("samples") or {}).items()},
            compile_s={str(k): float(v) for k, v in (d.get("compile_s") or {}).items()},
            decode_eager_tokens_per_s={str(k): float(v) for k, v in (d.get("decode_eager_tokens_per_s") or {}).items()},
            llamacpp=LlamaCppFacts.from_json(llamacpp) if isinstance(llamacpp, dict) else None,
        )


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

    def latency(self, batch: str) -> LatencyStats | None:
        """The timing of batch size ``batch`` (``"1"``, ``"64"``...), None where that batch was not timed."""
        stats = self.latency_ms.get(batch)
        return LatencyStats.from_json(stats) if stats else None

    @property
    def llm_facts(self) -> LLMFacts:
        """The causal-LM facts (setup, prefill, samples, llama.cpp), typed; empty for other models."""
        return LLMFacts.from_json(self.llm)

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

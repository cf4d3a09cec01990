"""The :class:`Measurement` of one model: what the report card shows, all measured, none estimated."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from slimtorch.errors import ArtifactError
from slimtorch.measure.keyed import KeyedFacts, Reader, count, mapping_of, number, object_of, read_keyed, text


def primary_metric(metrics: dict[str, Any] | None) -> tuple[str, float | None]:
    """The one headline metric of a model (higher is better): accuracy for classifiers, cosine to the
    original for encoders. Every table, the sweep's choice and the planner's floor use this."""
    for key in ("accuracy", "cosine"):
        value = (metrics or {}).get(key)
        if value is not None:
            return key, float(value)
    return "accuracy", None


@dataclass(frozen=True)
class LatencyStats(KeyedFacts):
    """One timed batch size in milliseconds (``latency_ms["<batch>"]`` in report.json).

    ``p10`` is None in reports written before side-by-side timing; ``rounds`` only on timings taken side by side
    (:func:`~slimtorch.measure.latency.time_interleaved`); ``mean``/``std``/``min``/``repeats`` may be absent from
    hand-made entries. ``extra`` and ``key_order`` write a report's entry back as it was (:mod:`slimtorch.measure.keyed`).
    """

    p50: float
    p90: float
    p10: float | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    repeats: int | None = None
    rounds: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    READERS: ClassVar[dict[str, Reader]] = {"p50": number, "p10": number, "p90": number, "mean": number, "std": number,
                                            "min": number, "repeats": count, "rounds": count}

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "a timing") -> LatencyStats:
        """Type one timing; numbers stay as they were written (an int stays an int).

        Raises:
            ArtifactError: ``d`` is not an object with numeric ``p50`` and ``p90``.
        """
        typed, extra = read_keyed(d, cls.READERS) if isinstance(d, dict) else ({}, {})
        if "p50" not in typed or "p90" not in typed:
            raise ArtifactError(f"{where} must be an object with numbers p50 and p90 (ms); got {str(d)[:80]}. "
                                "The report is corrupted: re-run the measurement to rebuild it.")
        return cls(**typed, extra=extra, key_order=tuple(d))


@dataclass(frozen=True)
class LLMSetup(KeyedFacts):
    """How a causal LM was scored and timed (``llm["setup"]``); None where an entry lacks a figure."""

    scored_tokens: int | None = None
    window: int | None = None
    stride: int | None = None
    split: str = "test"
    prefill_tokens: int | None = None
    decode_new_tokens: int | None = None
    decode_prompt_tokens: int | None = None
    kl_tokens: int | None = None
    decode: str = "eager"
    extra: dict[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    READERS: ClassVar[dict[str, Reader]] = {"scored_tokens": count, "window": count, "stride": count, "split": text,
                                            "prefill_tokens": count, "decode_new_tokens": count,
                                            "decode_prompt_tokens": count, "kl_tokens": count, "decode": text}


@dataclass(frozen=True)
class LlamaCppThreads(KeyedFacts):
    """llama.cpp's speed at one thread count."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    READERS: ClassVar[dict[str, Reader]] = {"prefill_tokens_per_s": number, "decode_tokens_per_s": number}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LlamaCppThreads:
        """Raises ValueError where ``d`` lacks a speed (the ``threads`` object is then kept as read)."""
        typed, extra = read_keyed(d, cls.READERS)
        if set(typed) != set(cls.READERS):
            raise ValueError(f"a llama.cpp speed needs numbers prefill_tokens_per_s and decode_tokens_per_s; got {str(d)[:80]}")
        return cls(**typed, extra=extra, key_order=tuple(d))


@dataclass(frozen=True)
class LlamaCppFacts(KeyedFacts):
    """A GGUF model as llama.cpp ran it (``llm["llamacpp"]``): its perplexity and speed per thread count, or why it was
    skipped (then only ``skipped`` is set). ``threads`` maps a thread count (``"1"``) to its speed."""

    skipped: str | None = None
    file: str | None = None
    gguf_bytes: int | None = None
    llama_cpp: str | None = None
    prefill_tokens: int | None = None
    decode_new_tokens: int | None = None
    threads: dict[str, LlamaCppThreads] | None = None
    perplexity: float | None = None
    nll: float | None = None
    scored_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    READERS: ClassVar[dict[str, Reader]] = {
        "skipped": text, "file": text, "gguf_bytes": count, "llama_cpp": text, "prefill_tokens": count,
        "decode_new_tokens": count, "threads": mapping_of(object_of(LlamaCppThreads.from_json)), "perplexity": number, "nll": number,
        "scored_tokens": count}


@dataclass(frozen=True)
class LLMFacts(KeyedFacts):
    """A causal LM's facts beyond its metrics (``llm`` in report.json; see :mod:`slimtorch.measure.llm`).

    Attributes:
        prefill_ms: the prefill of ``setup.prefill_tokens`` tokens at batch 1.
        samples: prompt → greedy continuation.
        setup: how it was scored and timed (window, stride, scored tokens, decode).
        llamacpp: a GGUF model's figures in llama.cpp; None for other models.
        decode_eager_tokens_per_s, compile_s: with compiled decoding (``setup.decode == "compiled"``), the eager
            tokens/s and the seconds of the first (compiling) call per batch size; None otherwise.
    """

    prefill_ms: LatencyStats | None = None
    samples: dict[str, str] = field(default_factory=dict)
    setup: LLMSetup = field(default_factory=LLMSetup)
    llamacpp: LlamaCppFacts | None = None
    decode_eager_tokens_per_s: dict[str, float] | None = None
    compile_s: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    READERS: ClassVar[dict[str, Reader]] = {
        "prefill_ms": object_of(LatencyStats.from_json), "samples": mapping_of(text), "setup": object_of(LLMSetup.from_json),
        "llamacpp": object_of(LlamaCppFacts.from_json),
        "decode_eager_tokens_per_s": mapping_of(number), "compile_s": mapping_of(number)}


@dataclass
class Measurement:
    """Everything measured about one model.

    Attributes:
        name, stage: model name in the report and the stage that produced it.
        params: parameter count; nonzero_params: parameters that are not zero (masks count as zeros).
        size_bytes: bytes on disk of the saved artifact directory, or of the one file its runtime loads (a GGUF file) (None when
            not saved).
        compressed_bytes: bytes of the artifact's weight files after zlib — where unstructured
            sparsity shows up, since dense formats store zeros at full width.
        macs: multiply-accumulates of one forward pass on ONE example (batch 1); None if not countable.
        runtime, threads: what ran the timed forward passes (``torch`` or ``onnxruntime``) and on how
            many intra-op threads.
        device: where the model was measured (``cpu``, ``cuda:0``, ...; see ``evaluate.device``).
        peak_memory_bytes: on a GPU, the peak memory the model's measurement allocated (weights moved
            there, activations of the largest batch); None on the CPU.
        latency_ms: ``{"<batch>": LatencyStats}`` (p50, p90, ... in milliseconds) per timed batch size.
        metrics: ``accuracy`` and ``per_class_accuracy`` (classification) or ``cosine`` (embedding).
        agreement: argmax agreement with the baseline (classification) or mean cosine (embedding).
        robustness: ``{"noise_<level>": metric}`` under Gaussian input noise of std ``level × input std``.
        notes: honest caveats found while measuring; seconds: how long the measurement took.
        cost_s: seconds per part of the measurement (params, size, macs, latency, accuracy, robustness).
        decode_tokens_per_s: causal LMs: ``{"<batch>": tokens/s}`` of greedy decoding with the KV cache.
        llm: causal LMs: :class:`LLMFacts` (prefill, greedy samples, setup, llama.cpp); None for other models. Their
            ``metrics`` hold ``perplexity``, ``nll``, ``token_agreement`` and ``kl_to_original`` (see :mod:`slimtorch.measure.llm`).
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
    latency_ms: dict[str, LatencyStats]
    metrics: dict[str, Any]
    agreement: float | None
    robustness: dict[str, float]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cost_s: dict[str, float] = field(default_factory=dict)
    decode_tokens_per_s: dict[str, float] = field(default_factory=dict)
    llm: LLMFacts | None = None
    device: str = "cpu"
    peak_memory_bytes: int | None = None
    energy: dict[str, Any] = field(default_factory=dict)

    @property
    def primary_metric(self) -> tuple[str, float | None]:
        """``("accuracy", value)`` for classifiers, ``("cosine", value)`` for encoders."""
        return primary_metric(self.metrics)

    def to_json(self) -> dict[str, Any]:
        """report.json's model entry: every field in declared order (``llm`` is ``{}`` for a model that is not a causal LM)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["latency_ms"] = {b: t.to_json() for b, t in self.latency_ms.items()}
        out["llm"] = {} if self.llm is None else self.llm.to_json()
        return copy.deepcopy(out)

    @classmethod
    def check_entry(cls, d: Any) -> None:
        """Raise :class:`ArtifactError` unless ``d`` is an object with every required key of a model entry."""
        if not isinstance(d, dict):
            raise ArtifactError(f"a model entry in the report must be an object; got {type(d).__name__}.")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - d.keys())
        if missing:
            raise ArtifactError(
                f"model entry {d.get('name', '?')!r} in the report lacks {', '.join(missing)}; "
                "the report is corrupted or from another tool. Re-run the measurement to rebuild it."
            )

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Measurement:
        """Rebuild from :meth:`to_json` output; unknown keys are ignored, missing required ones raise.

        Raises:
            ArtifactError: ``d`` is not an object, lacks a required key, or a timing lacks p50/p90.
        """
        cls.check_entry(d)
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: copy.deepcopy(v) for k, v in d.items() if k in names}
        who = f"model {d.get('name', '?')!r}"
        latency = values["latency_ms"]
        if not isinstance(latency, dict):
            raise ArtifactError(f"{who}: latency_ms must be an object of timings per batch size; got {type(latency).__name__}.")
        values["latency_ms"] = {b: LatencyStats.from_json(t, f"{who} latency_ms[{b!r}]") for b, t in latency.items()}
        llm = values.get("llm")
        values["llm"] = LLMFacts.from_json(llm) if isinstance(llm, dict) and llm else None
        return cls(**values)

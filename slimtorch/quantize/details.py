"""What the quantize stage records: one typed result per backend, turned into ``StageRecord.details`` by ``to_json``.

Each backend (``quantize/backends.py``) returns one of :data:`BackendDetails`; the stage wraps it in
:class:`QuantizeDetails` with what every backend shares (backend name, inputs, fidelity to the float model).
``QuantizeDetails.to_json()`` is the only place these become a dict, and it writes report.json's keys in the
order the report has always had them. This module imports neither torch nor the stage, so a renderer can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slimtorch.quantize.sensitivity import MixedPrecisionResult
    from slimtorch.quantize.smooth import SmoothingResult
    from slimtorch.train.loop import FitResult


@dataclass(frozen=True)
class Fidelity:
    """How close the quantized model's outputs are to the float model's on one batch."""

    output_max_abs_diff: float
    output_cosine: float
    argmax_agreement: float

    def rounded(self, ndigits: int) -> Fidelity:
        return Fidelity(round(self.output_max_abs_diff, ndigits), round(self.output_cosine, ndigits),
                        round(self.argmax_agreement, ndigits))

    def to_json(self) -> dict[str, float]:
        return {"output_max_abs_diff": self.output_max_abs_diff, "output_cosine": self.output_cosine,
                "argmax_agreement": self.argmax_agreement}


@dataclass(frozen=True)
class Calibration:
    """The calibration data a static int8 graph's activation ranges were measured on."""

    examples: int
    batches: int


@dataclass
class OnnxDetails:
    """onnxruntime or OpenVINO after post-training quantization (or none, fp32 on OpenVINO) of the exported graph."""

    onnx_fp32_bytes: int
    onnx_bytes: int
    excluded_nodes: list[str]  # ONNX nodes kept float: quantize.exclude, then the ones max_drop kept
    smoothing: SmoothingResult | None = None
    export: dict[str, Any] = field(default_factory=dict)  # _ort_transformer.encoder_onnx's facts (attention export)
    embedding_4bit_nodes: list[str] | None = None
    calibration: Calibration | None = None
    sensitivity: MixedPrecisionResult | None = None
    int8_notes: list[str] | None = None  # int8 modes only: weights left float, nodes kept float for -inf ranges

    def notes(self) -> list[str]:
        """Smoothing, then the int8 graph's notes, then max_drop's (which say why layers stayed float)."""
        return (([self.smoothing.note()] if self.smoothing is not None else []) + list(self.int8_notes or [])
                + (self.sensitivity.notes() if self.sensitivity is not None else []))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"onnx_fp32_bytes": self.onnx_fp32_bytes}
        if self.smoothing is not None:
            out["smoothing"] = self.smoothing.to_details()
        out.update(self.export)
        if self.embedding_4bit_nodes is not None:
            out["embedding_4bit_nodes"] = self.embedding_4bit_nodes
        if self.calibration is not None:
            out.update(calibration_examples=self.calibration.examples, calibration_batches=self.calibration.batches)
        if self.sensitivity is not None:
            out["quant_sensitivity"] = self.sensitivity.to_details()
        out.update(onnx_bytes=self.onnx_bytes, bytes_ratio_vs_onnx_fp32=round(self.onnx_bytes / self.onnx_fp32_bytes, 4),
                   excluded_nodes=self.excluded_nodes)
        if self.int8_notes is not None:
            out["int8_notes"] = self.int8_notes
        return out


@dataclass
class DynamicQATFacts:
    """Dynamic-int8-aware training of the float weights (dynamic_qat.py)."""

    fake_quant_linears: int
    val_after_calibration: float  # int8 arithmetic on the untrained weights
    val_after_training: float
    loss: str
    fit: FitResult

    def note(self) -> str:
        return (f"dynamic-int8-aware training ({self.loss}, {self.fit.steps} steps, {self.fake_quant_linears} Linears): val "
                f"{round(self.val_after_calibration, 6):.4f} with int8 arithmetic before -> {round(self.val_after_training, 6):.4f} after")

    def to_json(self) -> dict[str, Any]:
        return {"fake_quant_linears": self.fake_quant_linears, "val_after_calibration": round(self.val_after_calibration, 6),
                "val_after_training": round(self.val_after_training, 6), "loss": self.loss, "best_val": self.fit.best_metric,
                **self.fit.summary()}


@dataclass
class DynamicQATDetails:
    """Smoothing (if set), dynamic-int8-aware training, then ordinary onnxruntime dynamic int8 of the trained weights."""

    training: DynamicQATFacts
    onnx: OnnxDetails  # built from the trained (already smoothed) copy: no smoothing of its own
    smoothing: SmoothingResult | None = None

    def notes(self) -> list[str]:
        return [self.training.note()] + ([self.smoothing.note()] if self.smoothing is not None else []) + self.onnx.notes()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"smoothing": self.smoothing.to_details()} if self.smoothing is not None else {}
        return {**out, "dynamic_qat": self.training.to_json(), **self.onnx.to_json()}


@dataclass
class QATFacts:
    """Quantization-aware training (qat.py) and how close the exported int8 graph is to its fake-quant model."""

    val_after_calibration: float
    val_after_training: float
    loss: str
    fit: dict[str, Any]  # best_val and FitResult.summary(); empty with epochs: 0
    export: dict[str, int]  # qat.int8_initializers_'s counts
    is_masks_kept: bool
    parity: Fidelity  # int8 graph vs the fake-quant model

    def note(self) -> str:
        parity = self.parity.rounded(6)
        return (f"QAT ({self.loss}, {self.fit.get('epochs_run', 0)} epochs): val {round(self.val_after_calibration, 6):.4f} after "
                f"calibration -> {round(self.val_after_training, 6):.4f}; int8 graph vs fake-quant model: max |diff| "
                f"{parity.output_max_abs_diff:.3g}, argmax agreement {parity.argmax_agreement:.3f}"
                + ("; pruned zeros kept" if self.is_masks_kept else "; WARNING: pruned zeros were not all kept"))

    def to_json(self) -> dict[str, Any]:
        return {"val_after_calibration": round(self.val_after_calibration, 6), "val_after_training": round(self.val_after_training, 6),
                "loss": self.loss, **self.fit, **self.export, "masks_kept": self.is_masks_kept,
                "parity_vs_fake_quant": self.parity.rounded(6).to_json()}


@dataclass
class QATDetails:
    """Static int8 through QAT: the int8 QDQ graph exported from the trained fake-quant model."""

    onnx_bytes: int
    calibration_batches: int
    qat: QATFacts

    def notes(self) -> list[str]:
        return [self.qat.note()]

    def to_json(self) -> dict[str, Any]:
        return {"onnx_bytes": self.onnx_bytes, "calibration_batches": self.calibration_batches, "qat": self.qat.to_json()}


@dataclass
class BFloat16Details:
    """torch bf16: the model run in bfloat16."""

    def notes(self) -> list[str]:
        return []

    def to_json(self) -> dict[str, Any]:
        return {"dtype": "bfloat16"}


def skipped_note(skipped: list[str]) -> list[str]:
    return [f"kept in float: {', '.join(skipped[:8])}"] if skipped else []


@dataclass
class TorchDynamicInt8Details:
    """torch dynamic int8: which Linears, and the GEMM kernel chosen by timing both here."""

    quantized_linears: int
    skipped_linears: list[str]
    int8_kernel: str
    kernel_seconds: dict[str, float]  # each kernel family's time

    def notes(self) -> list[str]:
        return skipped_note(self.skipped_linears)

    def to_json(self) -> dict[str, Any]:
        return {"quantized_linears": self.quantized_linears, "skipped_linears": self.skipped_linears, "int8_kernel": self.int8_kernel,
                "int8_kernel_us": {k: round(v * 1e6, 1) for k, v in self.kernel_seconds.items()}}


@dataclass(frozen=True)
class CalibratedRounding:
    """GPTQ or AWQ: the calibration inputs and each Linear's relative output error after rounding."""

    method: str  # "gptq" or "awq"
    batches: int
    errors: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        mean = sum(self.errors.values()) / max(len(self.errors), 1)
        return {"calibration_batches": self.batches, f"{self.method}_relative_output_error_mean": round(mean, 6)}


@dataclass(frozen=True)
class EmbeddingTables:
    """Embedding tables quantized for the torch weight-only modes, and the Linears that run on them (tied)."""

    bits: int
    quantized: list[str]
    float_tables: list[str]
    tied: dict[str, str]  # embedding fqn -> the Linear that shares its packed table

    def note(self, group_size: int) -> str:
        """One sentence: the tables' precision, which Linear shares each, which stayed float."""
        grid = "int8 per row" if self.bits == 8 else f"int4 per {group_size} columns"
        shared = "; ".join(f"{lin} runs on {emb}'s table" for emb, lin in self.tied.items())
        kept = f"; kept in float: {', '.join(self.float_tables)}" if self.float_tables else ""
        return f"embedding tables {', '.join(self.quantized)}: {grid}, dequantized on lookup" + (f" ({shared})" if shared else "") + kept

    def to_json(self) -> dict[str, Any]:
        return {"embedding_bits": self.bits, "quantized_embeddings": self.quantized, "float_embeddings": self.float_tables,
                "tied_tables": self.tied}


@dataclass(frozen=True)
class KernelCheck:
    """The largest weight-only layer timed at ``rows`` rows against fp32 on this machine."""

    layer: str
    bits: int
    activations: str
    rows: int
    weight_only_us: float
    fp32_us: float
    speedup: float
    machine: str

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> KernelCheck:
        return cls(**row)

    def note(self) -> str | None:
        """A warning when the weight-only kernel is slower than fp32 here, and what to use instead."""
        if self.speedup >= 1.0:
            return None
        return (f"WARNING: int{self.bits} weight-only ({self.activations} activations) runs {self.layer} at "
                f"{self.speedup:.2f}x the speed of fp32 at batch 1 on this machine ({self.machine}): no fast kernel for it "
                "here. Smaller, not faster; for speed use mode: dynamic_int8 (runtime: auto times fbgemm and onnxruntime int8), "
                "or int8_weight_only with int8_activations: int8, and check `slimtorch doctor`.")

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "bits": self.bits, "activations": self.activations, "rows": self.rows,
                "weight_only_us": self.weight_only_us, "fp32_us": self.fp32_us, "speedup": self.speedup, "machine": self.machine}


@dataclass(frozen=True)
class ActivationsChoice:
    """``int8_activations: auto``: the path kept and each path's time on the largest int8 layer."""

    activations: str
    us: dict[str, float]


@dataclass
class WeightOnlyDetails:
    """torch int8/int4 weight-only: the packed Linears and tables, their activations, and the kernel check."""

    quantized_linears: int
    skipped_linears: list[str]
    group_size: int
    calibrated: CalibratedRounding | None = None
    embeddings: EmbeddingTables | None = None
    activations_choice: ActivationsChoice | None = None
    int8_activation_linears: list[str] | None = None  # int8 layers switched off bf16 activations
    kernel_check: KernelCheck | None = None

    def notes(self) -> list[str]:
        warning = self.kernel_check.note() if self.kernel_check is not None else None
        return (([warning] if warning else []) + skipped_note(self.skipped_linears)
                + ([self.embeddings.note(self.group_size)] if self.embeddings is not None and self.embeddings.quantized else []))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"quantized_linears": self.quantized_linears, "skipped_linears": self.skipped_linears}
        if self.calibrated is not None:
            out.update(self.calibrated.to_json())
        if self.embeddings is not None:
            out.update(self.embeddings.to_json())
        if self.activations_choice is not None:
            out.update(int8_activations_us=self.activations_choice.us, int8_activations=self.activations_choice.activations)
        if self.int8_activation_linears is not None:
            out["int8_activation_linears"] = self.int8_activation_linears
        out["kernel_check"] = self.kernel_check.to_json() if self.kernel_check is not None else None
        return out


BackendDetails = OnnxDetails | DynamicQATDetails | QATDetails | BFloat16Details | TorchDynamicInt8Details | WeightOnlyDetails


@dataclass(frozen=True)
class RuntimeCandidate:
    """One runtime ``runtime: auto`` tried: built and timed (``backend`` set), or refused (``why`` says so)."""

    runtime: str
    why: str
    is_chosen: bool = False
    backend: str | None = None
    metric: str = ""  # argmax_agreement or output_cosine, and its value
    fidelity: float = 0.0
    p50_ms: dict[str, float] = field(default_factory=dict)  # batch size -> median ms
    speedup_vs_float: dict[str, float] = field(default_factory=dict)  # batch size -> float p50 / this p50 (3 digits)

    def to_json(self) -> dict[str, Any]:
        if self.backend is None:
            return {"runtime": self.runtime, "chosen": self.is_chosen, "why": self.why}
        return {"runtime": self.runtime, "backend": self.backend, self.metric: round(self.fidelity, 6), "p50_ms": self.p50_ms,
                "speedup_vs_float": self.speedup_vs_float, "chosen": self.is_chosen, "why": self.why}


@dataclass(frozen=True)
class RuntimeAuto:
    """``runtime: auto``: every candidate, timed side by side with the float model on this machine."""

    candidates: list[RuntimeCandidate]
    timed_on: str
    threads: int | None
    float_p50_ms: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"candidates": [c.to_json() for c in self.candidates], "timed_on": self.timed_on, "threads": self.threads,
                "float_p50_ms": self.float_p50_ms}


@dataclass(frozen=True)
class OpenVINOFacts:
    """What OpenVINO compiled (``OpenVINOModule.runtime_facts()``): its version, precision, threads, int8 layers."""

    openvino: str
    inference_precision: str
    threads: int
    weight_layers: int  # Conv/MatMul/FullyConnected layers
    int8_weight_layers: int

    def note(self, mode: str) -> list[str]:
        if mode != "static_int8" or self.int8_weight_layers >= self.weight_layers:
            return []
        return [f"OpenVINO runs {self.int8_weight_layers} of {self.weight_layers} Conv/MatMul layers in int8; the others stay float."]

    def to_json(self) -> dict[str, Any]:
        return {"openvino": self.openvino, "inference_precision": self.inference_precision, "threads": self.threads,
                "weight_layers": self.weight_layers, "int8_weight_layers": self.int8_weight_layers}


@dataclass
class QuantizeDetails:
    """A quantize stage's ``details``: the backend's own result inside what every backend records."""

    backend: str
    inputs: list[str]
    result: BackendDetails
    fidelity: Fidelity  # the quantized model vs the float one, on 32 test examples
    reduce_range: bool | None = None  # onnxruntime/OpenVINO int8 only
    openvino: OpenVINOFacts | None = None
    runtime_auto: RuntimeAuto | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"backend": self.backend, "inputs": self.inputs, **self.result.to_json(), **self.fidelity.to_json()}
        if self.reduce_range is not None:
            out["reduce_range"] = self.reduce_range
        if self.openvino is not None:
            out["openvino"] = self.openvino.to_json()
        if self.runtime_auto is not None:
            out["runtime_auto"] = self.runtime_auto.to_json()
        return out

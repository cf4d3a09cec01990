"""``QuantizeConfig``: which precision, on which runtime, with which calibration."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slimtorch.errors import MissingExtraError
from slimtorch.stage_tags import FLOAT_TORCH, Handoff, StageConfig, StageTags

Mode = Literal["dynamic_int8", "static_int8", "fp16", "bf16", "int8_weight_only", "int4_weight_only", "fp32"]
Runtime = Literal["auto", "torch", "onnxruntime", "openvino"]
Quantizer = Literal["onnxruntime", "nncf"]
# Torch modes that also quantize embedding tables (embedding_bits): the packed weight-only formats.
WEIGHT_ONLY_MODES = ("int8_weight_only", "int4_weight_only")

# Which modes each runtime implements (and the backend that runs them).
RUNTIME_MODES: dict[str, dict[str, str]] = {
    "onnxruntime": {
        "dynamic_int8": "onnxruntime {version} dynamic int8 (MatMulInteger)",
        "static_int8": "onnxruntime {version} QDQ static int8",
        "fp16": "onnxruntime {version} fp16 (keep_io_types)",
    },
    # The `openvino` extra: the same ONNX graphs compiled by OpenVINO for the CPU.
    "openvino": {
        "fp32": "OpenVINO {version} fp32 (the exported ONNX graph, inference precision f32)",
        "static_int8": "OpenVINO {version} int8 (QDQ ONNX graph)",
    },
    "torch": {
        "dynamic_int8": "torch dynamic int8 (torch.ao numerics; fbgemm packed GEMM or aten._int_mm, the faster here)",
        "int8_weight_only": "torch aten._weight_int8pack_mm weight-only int8",
        "int4_weight_only": "torch aten._weight_int4pack_mm_for_cpu weight-only int4",
        "bf16": "torch bfloat16",
    },
}


class QATConfig(BaseModel):
    """``quantize.qat``: fake-quantized training before the int8 export (onnxruntime ``static_int8`` or ``dynamic_int8``).

    ``dynamic_int8`` (dynamic_qat.py): every Linear computes as onnxruntime's dynamic int8 does (uint8 activations
    with each batch's range, int8 per-channel weights) while training, embedding tables frozen; the float weights
    it leaves are then quantized as usual. ``smooth``, when set, is applied first, so training sees smoothed inputs.

    ``static_int8`` (qat.py): weights are fake-quantized per output channel (symmetric int8), activations per tensor (asymmetric
    int8, ranges calibrated on ``calibration_batches`` first and held); BatchNorm is folded into the
    convolutions first. Trained with the recipe's loss: distillation from the teacher when the run has
    one (by default pure distillation, ``alpha: 0``: the int8 model learns to match the float outputs),
    cross-entropy on labels otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(2, ge=0, description="passes over the training set with fake quantization")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (small: the model is already trained)")
    temperature: float = Field(4.0, gt=0, description="distillation temperature (with a teacher)")
    alpha: float = Field(0.0, ge=0, le=1, description="weight of the label loss against distillation (with a teacher)")
    batch_size: int | None = Field(None, gt=0, description="defaults to data.batch_size")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (a short pass over a large corpus)")


class QuantizeConfig(StageConfig):
    """Recipe entry ``- quantize: {mode: dynamic_int8, runtime: onnxruntime}``.

    Example:
        >>> QuantizeConfig(mode="static_int8", runtime="onnxruntime", calibration_batches=8).mode
        'static_int8'
    """

    mode: Mode = Field("dynamic_int8", description="target precision")
    runtime: Runtime = Field("auto", description="what runs the quantized model; auto: each runtime that implements the mode "
                             "(and the options given) is built and timed side by side on this machine, and the fastest that "
                             "keeps the others' fidelity is kept (a mode only one runtime implements resolves to it here)")
    per_channel: bool = Field(True, description="one weight scale per output channel (else per tensor)")
    reduce_range: bool | None = Field(None, description="7-bit weights (onnxruntime int8); null: on where this CPU's onnxruntime "
                                      "int8 GEMM sums uint8 x int8 pairs in saturating int16 (no VNNI: AVX2-only CPUs), off elsewhere")
    calibration_batches: int = Field(8, ge=1, description="static_int8: batches of the calibration split")
    calibration_split: Literal["train", "val", "transfer"] = Field("train", description="static_int8 calibration data")
    calibrate_method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="static_int8 range method")
    group_size: int = Field(32, description="int4_weight_only: weights per scale along the input axis")
    method: Literal["rtn", "gptq", "awq"] = Field("rtn", description="int4_weight_only: round-to-nearest, or GPTQ / AWQ calibrated on "
                                                  "calibration_split")
    damping: float = Field(0.01, gt=0, lt=1, description="gptq: λ added to the Hessian's diagonal, as a fraction of its mean")
    calibration_examples: int = Field(256, ge=1, description="gptq, awq: examples (sentences) of calibration_split to calibrate on")
    act_order: bool = Field(True, description="gptq: quantize input columns by decreasing Hessian diagonal (static group grids)")
    mse_grid: bool = Field(True, description="gptq: pick each group's range by least error over shrunk min/max (else plain min/max)")
    exclude: list[str] = Field(default_factory=list, description="modules (fqn/glob, torch) or ONNX node-name substrings kept in float")
    embedding_bits: Literal[4, 8] | None = Field(8, description="embedding tables: onnxruntime dynamic_int8 (8 = int8 Gather, 4 = "
                                                 "4-bit blocks) and torch weight-only modes (8 = int8 per row, 4 = int4 per group_size "
                                                 "columns, null = float; a tied lm_head runs on the same packed table)")
    int8_activations: Literal["auto", "bf16", "int8", "int8x2"] = Field(
        "auto", description="torch int8 weight-only layers (int8_weight_only's Linears, an int8 table's tied lm_head): bf16 "
        "activations on torch's weight-only kernel, or activations quantized per call on fbgemm's int8 GEMM: int8 (one pass), "
        "int8x2 (a second pass over the rounding residual: ~16-bit activations, twice the work); auto: bf16 or int8x2, both "
        "~16-bit, whichever runs the largest int8 layer faster here (int8x2 only when >10 % faster: bf16 is emulated "
        "without AVX512-BF16)")
    embedding_block_size: int = Field(32, ge=16, description="block size of 4-bit embedding tables (onnxruntime)")
    opset: int = Field(17, ge=13, le=21, description="ONNX opset of the export")
    attention: Literal["model", "eager", "fused"] = Field(
        "model", description="Hugging Face transformers on onnxruntime: export attention as the model runs it, as eager "
                             "MatMul/Softmax (faster int8 on CPU), or eager then fused by onnxruntime's transformer optimizer")
    smooth: float | None = Field(None, gt=0, lt=1, description="onnxruntime int8: SmoothQuant migration strength α (e.g. 0.8): "
                                 "each Linear's input channels are divided by max|X|^α / max|W|^(1-α), measured on "
                                 "calibration_batches, and its weight columns multiplied by it (see smooth.py)")
    threads: int = Field(1, ge=1, description="onnxruntime intra-op (OpenVINO inference) threads of the returned model")
    max_drop: float | None = Field(None, ge=0, lt=1, description="onnxruntime int8: allowed val-metric drop; the most "
                                   "sensitive layers stay float until it holds")
    max_float_fraction: float = Field(0.25, gt=0, le=1, description="max_drop: at most this fraction of the layers stays float")
    sensitivity: bool = Field(False, description="onnxruntime int8: scan every layer's quantization cost (always on with max_drop)")
    qat: QATConfig | None = Field(None, description="static_int8 on onnxruntime: quantization-aware training before export")
    quantizer: Quantizer = Field("onnxruntime", description="static_int8: who writes the int8 QDQ graph, onnxruntime's quantizer "
                                 "or NNCF's nncf.quantize (the openvino extra); either runs on onnxruntime or openvino")

    @model_validator(mode="after")
    def _check(self) -> QuantizeConfig:
        if self.runtime == "auto":
            fits = self.candidate_runtimes()
            if len(fits) == 1:  # nothing to choose: the one runtime that implements this mode with these options
                object.__setattr__(self, "runtime", fits[0])
                return self
            return self
        valid = RUNTIME_MODES[self.runtime]
        if self.mode not in valid:
            other = next(r for r, modes in RUNTIME_MODES.items() if self.mode in modes)
            raise ValueError(
                f"quantize.mode {self.mode!r} is not available for runtime {self.runtime!r}; valid modes for "
                f"{self.runtime}: {', '.join(sorted(valid))}. ({self.mode} runs on runtime: {other}"
                + ("; an fp32 onnxruntime model is what the export stage returns" if self.mode == "fp32" else "") + ".)"
            )
        if self.mode == "int4_weight_only" and self.group_size not in (32, 64, 128, 256):
            raise ValueError(f"quantize.group_size must be one of 32, 64, 128, 256 for int4; got {self.group_size}.")
        if self.method != "rtn" and self.mode != "int4_weight_only":
            raise ValueError(f"quantize.method {self.method!r} applies to mode: int4_weight_only (runtime: torch); got mode "
                             f"{self.mode!r}. Use method: rtn or mode: int4_weight_only.")
        if self.embedding_bits != 8 and not (self.runtime == "torch" and self.mode in WEIGHT_ONLY_MODES):
            if self.embedding_bits == 4 and (self.mode, self.runtime) != ("dynamic_int8", "onnxruntime"):
                raise ValueError(
                    "quantize.embedding_bits: 4 applies to mode: dynamic_int8 with runtime: onnxruntime and to the torch weight-only "
                    f"modes (int8_weight_only, int4_weight_only); got mode {self.mode!r}, runtime {self.runtime!r}. Remove "
                    "embedding_bits or change the mode."
                )
            if self.embedding_bits is None:
                raise ValueError(
                    "quantize.embedding_bits: null (float embedding tables) applies to the torch weight-only modes (int8_weight_only, "
                    f"int4_weight_only); got mode {self.mode!r}, runtime {self.runtime!r}. Use embedding_bits: 8 or 4, or remove it."
                )
        has_int8_weight_only = self.runtime == "torch" and (self.mode == "int8_weight_only" or (
            self.mode == "int4_weight_only" and self.embedding_bits == 8))
        if self.int8_activations not in ("auto", "bf16") and not has_int8_weight_only:
            raise ValueError(
                f"quantize.int8_activations: {self.int8_activations} applies to torch int8 weight-only layers (mode: int8_weight_only, or "
                f"int4_weight_only with embedding_bits: 8, whose tied lm_head is int8); got mode {self.mode!r}, runtime "
                f"{self.runtime!r}, embedding_bits {self.embedding_bits}. Remove int8_activations or use one of those.")
        int8_ort = self.runtime == "onnxruntime" and self.mode in ("static_int8", "dynamic_int8")
        if self.smooth is not None and not (int8_ort and (self.qat is None or self.mode == "dynamic_int8")):
            raise ValueError(
                f"quantize.smooth rescales Linear inputs for onnxruntime int8 (mode: dynamic_int8 or static_int8, runtime: "
                f"onnxruntime; with qat only dynamic_int8); got mode {self.mode!r}, runtime {self.runtime!r}"
                + (" with qat" if self.qat is not None else "") + ". Remove smooth or change the mode."
            )
        if (self.max_drop is not None or self.sensitivity) and not int8_ort:
            raise ValueError(
                "quantize.max_drop and quantize.sensitivity work on onnxruntime int8 (mode: static_int8 or dynamic_int8, "
                f"runtime: onnxruntime); got mode {self.mode!r}, runtime {self.runtime!r}. Remove them or change the mode."
            )
        if self.qat is not None and not (self.mode == "static_int8" and self.runtime != "torch" or int8_ort):
            raise ValueError(
                f"quantize.qat trains for mode: static_int8 (runtime: onnxruntime or openvino) or dynamic_int8 (runtime: "
                f"onnxruntime); got mode {self.mode!r}, runtime {self.runtime!r}. Change the mode or runtime, or remove qat."
            )
        self._check_quantizer()
        if self.qat is not None and (self.max_drop is not None or self.sensitivity or self.exclude):
            raise ValueError("quantize.qat quantizes every Conv/Linear and cannot be combined with max_drop, sensitivity or "
                             "exclude; use either qat or max_drop (post-training, mixed precision).")
        return self

    def candidate_runtimes(self) -> list[str]:
        """The runtimes that implement this mode with these options and are installed (what ``runtime: auto`` times).

        Raises:
            ValueError: none does; the message gives each runtime's reason.
        """
        if self.runtime != "auto":
            return [self.runtime]
        fits, reasons = [], {}
        for runtime in RUNTIME_MODES:
            try:
                QuantizeConfig.model_validate({**self.model_dump(exclude={"runtime"}), "runtime": runtime})
            except ValidationError as exc:
                reasons[runtime] = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
                continue
            if runtime == "openvino" and importlib.util.find_spec("openvino") is None:
                reasons[runtime] = "not installed (pip install 'slimtorch[openvino]')"
                continue  # an optional extra: auto does not make a run depend on it
            fits.append(runtime)
        if not fits:
            raise ValueError(f"quantize.runtime: auto found no runtime for mode {self.mode!r} with these options: "
                             + " | ".join(f"{r}: {why}" for r, why in reasons.items()))
        return fits

    def _check_quantizer(self) -> None:
        if self.quantizer == "onnxruntime":
            return
        if self.mode != "static_int8" or self.runtime == "torch":
            raise ValueError(f"quantize.quantizer: nncf writes a static int8 graph for runtime: onnxruntime or openvino; got mode "
                             f"{self.mode!r}, runtime {self.runtime!r}. Set mode: static_int8, or remove quantizer.")
        if self.qat is not None or self.max_drop is not None or self.sensitivity:
            raise ValueError("quantize.quantizer: nncf is post-training quantization with NNCF's own choices; it cannot be combined "
                             "with qat, max_drop or sensitivity (those use onnxruntime's quantizer). Remove quantizer: nncf or them.")
        if self.calibrate_method != "minmax" or not self.per_channel or self.reduce_range:
            raise ValueError("quantize.calibrate_method, per_channel and reduce_range set onnxruntime's quantizer; quantizer: nncf "
                             f"uses NNCF's defaults (got calibrate_method {self.calibrate_method!r}, per_channel {self.per_channel}, "
                             f"reduce_range {self.reduce_range}). Leave them at minmax / true / false, or use quantizer: onnxruntime.")

    def stage_tags(self) -> StageTags:
        trains = self.qat is not None
        label = f"mode {self.mode}, runtime {self.runtime}"
        if self.runtime == "torch" and self.mode == "bf16":  # trainable, but onnxruntime has no bfloat16 kernels for it
            return StageTags(trains=trains, backward=trains, deploys=True, hands_on=frozenset({"torch_bf16"}), label=label,
                             instead="For half precision on onnxruntime use quantize {mode: fp16, runtime: onnxruntime} instead of bf16")
        # runtime auto picks among its candidates when it runs: a later stage has to take what any of them returns
        runtimes = self.candidate_runtimes() if self.runtime == "auto" else [self.runtime]
        hands_on = frozenset[Handoff]("torch_int" if r == "torch" else "graph" for r in runtimes)
        graph_runtime = next((r for r in runtimes if r != "torch"), "torch")
        takes = frozenset[Handoff]({"torch"}) if self.runtime == "onnxruntime" else FLOAT_TORCH
        return StageTags(trains=trains, backward=trains, deploys=True, hands_on=hands_on, takes=takes, runtime=graph_runtime,
                         label=label)

    def backend(self) -> str:
        """Human-readable name of the library path that runs this config (an optional package not installed: its version is '?')."""
        from slimtorch.quantize._openvino import nncf_version
        from slimtorch.quantize._ort import ort_version
        from slimtorch.runtime import openvino_version

        def version(of: Callable[[], str]) -> str:
            try:
                return of()
            except MissingExtraError:
                return "? (not installed)"

        if self.runtime == "auto":
            return f"the fastest here of: {' | '.join(self.model_copy(update={'runtime': r}).backend() for r in self.candidate_runtimes())}"
        text = RUNTIME_MODES[self.runtime][self.mode] + {"rtn": "", "gptq": ", GPTQ-calibrated", "awq": ", AWQ-scaled"}[self.method]
        if "{version}" in text:
            text = text.format(version=version(openvino_version) if self.runtime == "openvino" else ort_version())
        if self.quantizer == "nncf":
            text += f", quantized by NNCF {version(nncf_version)}"
        elif self.runtime == "openvino" and self.mode == "static_int8":
            text += ", from slimtorch's QAT" if self.qat is not None else f", quantized by onnxruntime {ort_version()}'s quantizer"
        return text

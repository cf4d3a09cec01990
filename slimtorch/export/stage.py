"""The ``export`` stage: torch model in, onnxruntime model (or a GGUF file for llama.cpp) out, with the parity recorded."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from slimtorch.core import RunContext, Stage, StageRecord
from slimtorch.errors import UnsupportedModuleError
from slimtorch.export.gguf import GGUFCalibration, GGUFQuant, export_gguf
from slimtorch.export.onnx import max_abs_diff, resize_batch, to_ort
from slimtorch.models.attrs import set_attrs_


class ExportConfig(BaseModel):
    """Recipe entry ``- export: {opset: 17, atol: 1e-4}``, or ``- export: {format: gguf, quant: q4_1}`` for llama.cpp."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["onnx", "gguf"] = Field("onnx", description="onnx (onnxruntime), or gguf (llama.cpp; LLaMA-architecture causal LMs)")
    quant: GGUFQuant | None = Field(None, description="gguf: how weight matrices are stored (default q8_0; q4_1 keeps slimtorch's "
                                    "int4 codes exactly)")
    table: GGUFQuant | None = Field(None, description="gguf: how the token-embedding / output table is stored (default q8_0 "
                                    "for a 4-bit quant, as llama.cpp's quantizer keeps it, else quant; slimtorch int4 table codes "
                                    "in a q4_1 file stay exact)")
    min_top1_agreement: float = Field(0.5, ge=0, le=1, description="gguf: least top-1 agreement of the file read back with the "
                                      "model (a wrong layout gives chance level)")
    check_tokens: int = Field(256, ge=8, description="gguf: tokens of the test text the read-back logits are compared on")
    method: Literal["rtn", "gptq"] = Field("rtn", description="gguf block types: rtn (round to nearest on each block's best "
                                           "range) or gptq (codes chosen by GPTQ on the exact stored grid; needs calibration text)")
    calibration_examples: int = Field(128, ge=1, description="gguf, with method: gptq or a size target: calibration sentences")
    calibration_split: Literal["train", "val", "transfer"] = Field("train", description="gguf: split the calibration text comes from")
    bits_per_weight: float | None = Field(None, gt=2, le=16, description="gguf size target: bits per weight over the weight "
                                          "matrices; a type per matrix is chosen by measured sensitivity")
    size_mb: float | None = Field(None, gt=0, description="gguf size target: file size in MB (1e6 bytes), allocated like "
                                  "bits_per_weight")

    opset: int = Field(17, ge=13, le=21, description="ONNX opset version")
    atol: float = Field(1e-4, gt=0, description="largest allowed |onnxruntime - torch| on the parity batches")
    on_mismatch: Literal["error", "warn"] = Field("error", description="what to do when parity fails (onnx: atol, gguf: "
                                                  "min_top1_agreement)")
    example_batch_size: int = Field(4, ge=1, description="rows of the example batch traced by the exporter")
    threads: int = Field(1, ge=1, description="onnxruntime intra-op threads of the returned model")

    @model_validator(mode="after")
    def _check(self) -> ExportConfig:
        if self.table is not None and self.format != "gguf":
            raise ValueError(f"export.table ({self.table!r}) sets how a GGUF file stores its embedding table; add format: gguf, or "
                             "remove table.")
        gguf_only = {"method": self.method != "rtn", "bits_per_weight": self.bits_per_weight is not None,
                     "size_mb": self.size_mb is not None}
        if self.format != "gguf" and any(gguf_only.values()):
            raise ValueError(f"export.{next(k for k, v in gguf_only.items() if v)} applies to GGUF files; add format: gguf.")
        if self.bits_per_weight is not None and self.size_mb is not None:
            raise ValueError("give one GGUF size target: export.bits_per_weight or export.size_mb, not both.")
        if self.quant is not None and self.format != "gguf":
            raise ValueError(f"export.quant ({self.quant!r}) sets how a GGUF file stores its weights; add format: gguf, or remove "
                             "quant (ONNX export writes float32; quantize with a quantize stage).")
        return self


def parity_check(model: nn.Module, ort_model: nn.Module, ctx: RunContext, batch_size: int) -> dict[str, float]:
    """Max |ORT − torch| on test batches of the traced size and of other sizes (dynamic axis)."""
    diffs = {}
    for n in sorted({batch_size, 1, 2 * batch_size + 1}):
        diffs[f"batch_{n}"] = max_abs_diff(model, ort_model, resize_batch(ctx.data.example_batch(n), n))
    return diffs


class ExportStage(Stage[ExportConfig], kind="export"):
    """Export to ONNX (dynamic batch axis) and return an :class:`~slimtorch.runtime.OrtModule`, or write a GGUF file.

    ``format: gguf`` returns the model as transformers reads the file back (fp32 weights, saved as the
    GGUF file itself), with its logits compared against the exported model's.
    """

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        cfg = self.config
        if cfg.format == "gguf":
            return self._gguf(model, ctx)
        example = ctx.data.example_batch(cfg.example_batch_size)
        ort_model = to_ort(model, example, cfg.opset, cfg.threads)
        diffs = parity_check(model, ort_model, ctx, cfg.example_batch_size)
        worst = max(diffs.values())
        ort_model.meta["max_abs_diff"] = worst
        set_attrs_(ort_model, slimtorch_spec=getattr(model, "slimtorch_spec", None))
        record = self.record(details={
            "backend": "torch.onnx.export (TorchScript) + onnxruntime",
            "opset": cfg.opset, "onnx_bytes": ort_model.size_bytes,
            "max_abs_diff": worst, "max_abs_diff_by_batch": diffs,
        })
        if worst > cfg.atol:
            message = (f"ONNX export differs from torch by {worst:.3g} (> atol {cfg.atol:g}); some op is not "
                       "reproduced faithfully. Raise export.atol if this is expected, or keep runtime: torch.")
            if cfg.on_mismatch == "error":
                raise UnsupportedModuleError(message)
            record.notes.append(message)
        return ort_model, record

    def _gguf(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        cfg = self.config
        quant = cfg.quant or "q8_0"
        calibration = GGUFCalibration(cfg.method, cfg.calibration_examples, cfg.calibration_split, cfg.bits_per_weight, cfg.size_mb)
        out, details = export_gguf(model, ctx.data, ctx.stage_dir("export"), quant, cfg.check_tokens, cfg.table, calibration)
        record = self.record(details=details)
        parity = details["parity"]
        table = f", embedding table {details['table_quant']}" if details["table_quant"] not in (None, quant) else ""
        record.notes.append(f"GGUF {quant}{table} ({details['gguf_bytes'] / 1e6:.1f} MB) read back by transformers: top-1 agreement "
                            f"{parity['top1_agreement']:.3f}, max |Δ logit| {parity['max_abs_diff']:.3g}, KL {parity['kl_nats']:.4f} "
                            f"nats on {parity['tokens']} tokens; the report card measures its weights dequantized to fp32 in torch "
                            "(llama.cpp runs the file itself).")
        if details["size_plan"]:
            plan = details["size_plan"]
            record.notes.append(f"size target: {plan['bits_per_weight']:.3f} bits per weight over the matrices "
                                f"({plan['matrix_bytes'] / 1e6:.2f} of {plan['budget_bytes'] / 1e6:.2f} MB allowed), types "
                                + ", ".join(f"{k} ×{v}" for k, v in plan["tensors_by_type"].items()))
        if details["gptq_tensors"]:
            record.notes.append(f"{details['gptq_tensors']} matrices' codes chosen by GPTQ on the stored block grid.")
        if details["exact_int4_tensors"]:
            record.notes.append(f"{details['exact_int4_tensors']} int4 matrices written code for code as Q4_1.")
        if details["f16_fallback_tensors"]:
            record.notes.append(f"kept f16 (rows not a multiple of 32): {', '.join(details['f16_fallback_tensors'][:8])}")
        if parity["top1_agreement"] < cfg.min_top1_agreement:
            message = (f"the GGUF file agrees with the model on only {parity['top1_agreement']:.3f} of next tokens "
                       f"(< min_top1_agreement {cfg.min_top1_agreement}); store more bits (quant: q8_0) or lower min_top1_agreement.")
            if cfg.on_mismatch == "error":
                raise UnsupportedModuleError(message)
            record.notes.append(message)
        return out, record

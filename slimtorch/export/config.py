"""The ``export`` stage's recipe entry: a leaf (pydantic only), so recipes load without the exporters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimtorch.distill.config import DistillConfig, TokenSpec
from slimtorch.stage_tags import Handoff, StageConfig, StageTags

# How a GGUF file stores a weight matrix (llama.cpp's names).
GGUFQuant = Literal["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"]


# A recovery's learning rate when it trains LoRA adapters (B starts at zero, so a rate of full fine-tuning barely moves them).
LORA_LR = 5e-4


class RecoverLora(BaseModel):
    """``export.recover.lora``: train low-rank adapters on the rounded model instead of every weight, then merge them into
    the file's codes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(16, ge=1, description="rank r of each matrix's update B·A")
    lora_alpha: float = Field(32.0, gt=0, description="scaling numerator: the update is (lora_alpha / rank)·B·A")
    through_rounding: bool = Field(True, description="true: each matrix computes with round(W + s·B·A) on its fixed grid "
                                   "(straight-through), so the merge is exact; false: peft's adapter beside the frozen rounded "
                                   "weights (QLoRA's way), merged and re-quantized afterwards")


class RecoverConfig(DistillConfig):
    """``export.recover``: the distill stage's settings, with defaults for a short recovery of a pretrained LM: 64 steps
    of 4 sequences of 128 tokens (the first 256 of the text, one epoch), the setting docs/LLM.md measures."""

    epochs: int = Field(1, ge=0, description="ceiling on passes over the distillation text")
    max_steps: int | None = Field(64, ge=1, description="optimizer steps (64 took SmolLM2-135M's q4_0 file from 1.136x to 1.046x "
                                                        "fp32 perplexity)")
    batch_size: int | None = Field(4, gt=0, description="sequences per step")
    tokens: TokenSpec = Field(default_factory=lambda: TokenSpec(max_sequences=256), description="the distillation text as "
                              "sequences (default: the first 256 of 128 tokens, what 64 steps of 4 use)")
    lora: RecoverLora | None = Field(None, description="train LoRA adapters on the rounded matrices (the base frozen at its "
                                     "codes) instead of every weight, and merge them into the codes; lr defaults to "
                                     f"{LORA_LR:g} then")


class ExportConfig(StageConfig):
    """Recipe entry ``- export: {opset: 17, atol: 1e-4}``, or ``- export: {format: gguf, quant: q4_1}`` for llama.cpp."""

    format: Literal["onnx", "gguf", "executorch"] = Field("onnx", description="onnx (onnxruntime), gguf (llama.cpp; LLaMA-architecture "
                                                          "causal LMs), or executorch (a .pte with the XNNPACK delegate, for phones)")
    int8: bool = Field(False, description="executorch: int8 through XNNPACK's quantizer, calibrated on training batches")
    calibration_batches: int = Field(4, ge=1, description="executorch int8: training batches the quantizer observes")
    quant: GGUFQuant | None = Field(None, description="gguf: how weight matrices are stored (default q8_0; q4_1 keeps slimtorch's "
                                    "int4 codes exactly)")
    table: GGUFQuant | None = Field(None, description="gguf: how the token-embedding / output table is stored (default q8_0 "
                                    "for a 4-bit quant, as llama.cpp's quantizer keeps it, else quant; slimtorch int4 table codes "
                                    "in a q4_1 file stay exact)")
    min_top1_agreement: float = Field(0.5, ge=0, le=1, description="gguf: least top-1 agreement of the file read back with the "
                                      "model (a wrong layout gives chance level)")
    check_tokens: int = Field(256, ge=8, description="gguf: tokens of the test text the read-back logits are compared on")
    method: Literal["rtn", "gptq"] = Field("rtn", description="gguf block types: rtn (round to nearest on each block's best "
                                           "range) or gptq (codes chosen by GPTQ on the exact stored grid; needs calibration text); with recover, the "
                                           "codes training starts from (then on a grid fixed from the start)")
    calibration_examples: int = Field(128, ge=1, description="gguf, with method: gptq or a size target: calibration sentences")
    calibration_split: Literal["train", "val", "transfer"] = Field("train", description="gguf: split the calibration text comes from")
    bits_per_weight: float | None = Field(None, gt=2, le=16, description="gguf size target: bits per weight over the weight "
                                          "matrices; a type per matrix is chosen by measured sensitivity")
    size_mb: float | None = Field(None, gt=0, description="gguf size target: file size in MB (1e6 bytes), allocated like "
                                  "bits_per_weight")
    recover: RecoverConfig | None = Field(None, description="gguf: token-distil the model from the original first, every "
                                          "block-type matrix computing in the file's blocks (straight-through), so the rounding "
                                          "it learns is the rounding written; the distill stage's settings (tokens, epochs, "
                                          "max_steps, lr, ...)")

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
        if self.recover is not None:
            if self.format != "gguf":
                raise ValueError("export.recover trains the model in GGUF blocks; add format: gguf, or remove recover.")
            if (self.quant or "q8_0") in ("f16", "f32"):
                raise ValueError(f"export.recover recovers from block rounding; quant {self.quant} stores floats. Pick a block type "
                                 "(q4_k_m, q4_0, ...), or remove recover.")
        if self.int8 and self.format != "executorch":
            raise ValueError("export.int8 quantizes an ExecuTorch program; add format: executorch, or use a quantize stage.")
        return self

    def stage_tags(self) -> StageTags:
        runtime = {"onnx": "onnxruntime", "gguf": "llama.cpp", "executorch": "ExecuTorch"}[self.format]
        # A GGUF file is written from the weights, so it also takes torch's int8/int4 layers (int4 codes go to Q4_1 as they are).
        takes = frozenset[Handoff]({"torch", "torch_int"} if self.format == "gguf" else {"torch"})
        trains = self.recover is not None
        return StageTags(trains=trains, backward=trains, deploys=True, hands_on=frozenset({"graph"}), takes=takes, runtime=runtime)

"""The recipe's ``target:`` block: a budget the planner must meet, and where it may search."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slimtorch.export.config import ExportConfig
from slimtorch.quantize.config import QuantizeConfig

QuantizeOption = Literal["none", "dynamic_int8", "static_int8"]
DEFAULT_QUANTIZE: tuple[QuantizeOption, ...] = ("none", "dynamic_int8")
# What a runtime: llama.cpp target prunes, and the fractions of it tried by default (of 30 layers: 0, 3, 6 and 9).
LLM_GRANULARITIES = ("layer", "head", "ffn")
LLAMACPP_SPARSITIES = (0.0, 0.1, 0.2, 0.3)


class TargetConfig(BaseModel):
    """A budget: exactly one of ``latency_ms`` (at ``batch``), ``size_mb`` or ``speedup``; plus an accuracy floor.

    Example:
        >>> TargetConfig(latency_ms=0.5, batch=1, min_accuracy=0.9).kind
        'latency_ms'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float | None = Field(None, gt=0, description="p50 latency budget at `batch` on `runtime`")
    size_mb: float | None = Field(None, gt=0, description="bytes-on-disk budget of the final artifact, in MB (10^6 bytes, as every report prints it)")
    speedup: float | None = Field(None, gt=1, description="p50 latency at `batch` must be this many times lower than the original's")
    batch: int = Field(1, ge=1)
    min_accuracy: float | None = Field(None, gt=0, le=1, description="accuracy floor (fraction) of the final model")
    runtime: Literal["torch", "onnxruntime", "llama.cpp"] = Field("onnxruntime", description="where the final model runs; "
                                                                  "llama.cpp: a GGUF file of size_mb for a causal LM, layers "
                                                                  "dropped (sparsities) against bits per weight")
    sparsities: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.4, 0.5, 0.6, 0.7, 0.8], min_length=1)
    quantize: list[QuantizeOption] = Field(default_factory=lambda: list(DEFAULT_QUANTIZE), min_length=1)
    granularity: Literal["filter", "channel", "neuron", "head", "ffn", "layer"] = "filter"
    criterion: Literal["magnitude", "activation", "taylor", "random"] | None = Field(
        None, description="how pruning ranks what it removes; default: activation for granularity: layer (block influence: "
                          "what a layer changes in the hidden states), magnitude otherwise")
    quantize_args: dict[str, Any] = Field(default_factory=dict, description="settings of the int8 candidates' quantize stage "
                                          "besides mode and runtime (e.g. {attention: eager, smooth: 0.8})")
    export_args: dict[str, Any] = Field(default_factory=dict, description="runtime llama.cpp: settings of the GGUF export besides "
                                        "format and size_mb, used for every candidate and the chosen one (e.g. {method: gptq})")
    round_to: int | None = Field(8, ge=1, description="keep channel counts a multiple of this (hardware-friendly)")
    recover_epochs: int = Field(5, ge=0, description="fine-tune epochs after pruning when the recipe gives no recovery stage")
    repeats: int = Field(30, ge=5, description="timed runs per candidate")

    @model_validator(mode="after")
    def _one_budget(self) -> TargetConfig:
        given = [k for k in ("latency_ms", "size_mb", "speedup") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"target needs exactly one of latency_ms, size_mb, speedup; got {given or 'none'}.")
        bad = [s for s in self.sparsities if not 0 <= s < 1]
        if bad:
            raise ValueError(f"target.sparsities must be in [0, 1); got {bad}.")
        self._check_quantize_args()
        if self.runtime == "llama.cpp":
            self._check_llamacpp()
        elif self.export_args:
            raise ValueError("target.export_args sets the GGUF export of a runtime: llama.cpp target; add runtime: llama.cpp, or "
                             "remove export_args.")
        return self

    def _check_llamacpp(self) -> None:
        if self.kind != "size_mb":
            raise ValueError(f"a runtime: llama.cpp target is a GGUF file size: give size_mb instead of {self.kind} (the report "
                             "card measures the file's tokens/s in llama.cpp).")
        if self.min_accuracy is not None:
            raise ValueError("min_accuracy is a floor on accuracy or cosine; a runtime: llama.cpp target ranks its candidates by "
                             "perplexity. Remove min_accuracy.")
        if "quantize" in self.model_fields_set:
            raise ValueError("with runtime: llama.cpp the size target chooses each matrix's GGUF type; remove target.quantize "
                             "(export_args: {method: gptq} calibrates the codes).")
        if "granularity" in self.model_fields_set and self.granularity not in LLM_GRANULARITIES:
            raise ValueError(f"runtime: llama.cpp prunes a causal LM's {', '.join(LLM_GRANULARITIES)}; granularity "
                             f"{self.granularity!r} is for other models.")
        fixed = sorted({"format", "size_mb", "bits_per_weight"} & set(self.export_args))
        if fixed:
            raise ValueError(f"target.export_args: {' and '.join(fixed)} come(s) from the target; remove them from export_args.")
        try:
            ExportConfig(format="gguf", size_mb=self.size_mb, **self.export_args)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'export'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"target.export_args does not make a valid GGUF export: {problems}.") from None

    @property
    def search_sparsities(self) -> list[float]:
        """The pruning ratios tried: the given ones, or for llama.cpp fractions of layers a small LM can lose."""
        if self.runtime == "llama.cpp" and "sparsities" not in self.model_fields_set:
            return list(LLAMACPP_SPARSITIES)
        return self.sparsities

    @property
    def candidate_count(self) -> int:
        """Candidates the search measures: each ratio with each quantize mode, or each ratio once for llama.cpp (its
        candidates are GGUF files at the size target, with no quantize stage)."""
        return len(self.search_sparsities) * (1 if self.runtime == "llama.cpp" else len(self.quantize))

    @property
    def search_granularity(self) -> str:
        return "layer" if self.runtime == "llama.cpp" and "granularity" not in self.model_fields_set else self.granularity

    def _check_quantize_args(self) -> None:
        fixed = sorted({"mode", "runtime"} & set(self.quantize_args))
        if fixed:
            raise ValueError(f"target.quantize_args sets the quantize stage's other settings; {' and '.join(fixed)} come(s) from "
                             "target.quantize and target.runtime. Remove them from quantize_args.")
        for mode in self.quantize:
            if mode != "none":
                try:
                    QuantizeConfig(mode=mode, runtime="onnxruntime", **self.quantize_args)
                except ValidationError as exc:
                    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'quantize'}: {e['msg']}" for e in exc.errors())
                    raise ValueError(f"target.quantize_args does not make a valid quantize stage for mode {mode}: {problems}.") from None

    @property
    def prune_criterion(self) -> str:
        """The criterion candidates are pruned with: a layer is ranked by what it does to the hidden states."""
        if self.criterion is not None:
            return self.criterion
        return "activation" if self.search_granularity == "layer" else "magnitude"

    @property
    def kind(self) -> str:
        return next(k for k in ("latency_ms", "size_mb", "speedup") if getattr(self, k) is not None)

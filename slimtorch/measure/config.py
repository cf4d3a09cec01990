"""What the report card measures and how (the recipe's ``evaluate:`` block)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimtorch.resources import check_device_spec

# A causal LM is timed by its prefill and decode loop (evaluate.llm); its plain forward pass only at batch 1.
CAUSAL_LM_BATCH_SIZES = [1]


class LatencyConfig(BaseModel):
    """Latency is timed on the artifact's own runtime with warm-up, repeats, a fixed thread count and a time budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1,
                                   description="batch sizes timed ([1] for a causal LM unless given)")
    warmup: int = Field(20, ge=0, description="untimed runs first (batch-1 eager timings need at least 20)")
    repeats: int = Field(50, ge=3)
    threads: int = Field(1, ge=1, description="intra-op threads for torch and onnxruntime while timing")
    max_seconds: float | None = Field(10.0, gt=0, description="time budget per model and batch size: warm-up stops after half "
                                      "of it, timed runs after the other half (at least 1 warm-up and 3 timed runs); null: "
                                      "always run warmup + repeats")

    def sizes_for(self, is_causal_lm: bool) -> list[int]:
        """The batch sizes to time: as given, or batch 1 alone for a causal LM when the recipe did not name them."""
        return CAUSAL_LM_BATCH_SIZES if is_causal_lm and "batch_sizes" not in self.model_fields_set else self.batch_sizes

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError(f"evaluate.latency.batch_sizes must be positive whole numbers (examples per timed call); got {v}. Try [1, 64].")
        return v


class LLMEvalConfig(BaseModel):
    """How causal language models are measured (``evaluate.llm``; see :mod:`slimtorch.measure.llm`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(256, ge=2, description="tokens per perplexity window")
    stride: int = Field(128, ge=1, description="tokens between window starts; each window scores only tokens not scored before")
    max_tokens: int = Field(4096, ge=1, description="at most this many eval tokens are scored")
    kl_tokens: int = Field(1024, ge=1, description="positions whose full distribution is kept for KL to the original")
    prefill_tokens: int = Field(128, ge=1, description="prompt length of the timed batch-1 prefill")
    prefill_repeats: int = Field(10, ge=3)
    decode_batch_sizes: list[int] = Field(default_factory=lambda: [1, 8], min_length=1)
    decode_tokens: int = Field(32, ge=2, description="new tokens per timed greedy generate")
    decode_prompt_tokens: int = Field(16, ge=1)
    decode_repeats: int = Field(3, ge=1)
    sample_tokens: int = Field(24, ge=1, description="new tokens of each greedy sample in report.md")
    compile: bool = Field(False, description="time decoding with a static KV cache and the decode step compiled by torch.compile "
                                             "(inductor); the eager figures are kept beside (llm.decode_eager_tokens_per_s)")

    @model_validator(mode="after")
    def _stride_fits(self) -> LLMEvalConfig:
        if self.stride >= self.window:
            raise ValueError(f"evaluate.llm.stride ({self.stride}) must be < window ({self.window}): a window's first token has no "
                             "context, so windows must overlap by at least one token or some tokens go unscored.")
        return self


class EnergyConfig(BaseModel):
    """Energy per inference (``evaluate.energy``; see :mod:`slimtorch.measure.energy`).

    ``measure`` reads the machine's counter (RAPL, NVML) where one is exposed and says so where none is;
    ``estimate`` adds a labelled estimate (TDP × this process's CPU share × time), kept apart from measured figures.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["measure", "estimate", "off"] = Field("measure", description="measure: counters only; estimate: also a labelled "
                                                        "TDP × utilisation estimate; off: no energy section")
    tdp_watts: float | None = Field(None, gt=0, description="the CPU's thermal design power in watts (estimate only; from its data sheet)")

    @model_validator(mode="after")
    def _estimate_needs_tdp(self) -> EnergyConfig:
        if self.mode == "estimate" and self.tdp_watts is None:
            raise ValueError("evaluate.energy.mode estimate needs tdp_watts, the CPU's thermal design power from its data sheet "
                             "(e.g. {mode: estimate, tdp_watts: 65}); the estimate is TDP × this process's CPU share × time")
        return self


class EvaluateConfig(BaseModel):
    """The recipe's ``evaluate:`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: Literal["val", "test"] = "test"
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    noise_levels: list[float] = Field(default_factory=lambda: [0.1, 0.3], description="Gaussian input noise std, in units of the input's std")
    max_eval_examples: int | None = Field(None, ge=1, description="cap the examples used for metrics (large text sets)")
    llm: LLMEvalConfig = Field(default_factory=LLMEvalConfig, description="causal language models: perplexity, decode speed, samples")
    energy: EnergyConfig = Field(default_factory=EnergyConfig, description="joules per inference from RAPL/NVML counters where exposed")
    device: str = Field("auto", description="where models are measured: auto (the device the run trains on), cpu, cuda, cuda:N or mps")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device_spec(value)

    @field_validator("noise_levels")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(not level >= 0 for level in v):
            raise ValueError(f"evaluate.noise_levels are noise std in units of the input's std, so each must be >= 0; got {v}.")
        return v

"""What the report card measures and how (the recipe's ``evaluate:`` block)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LatencyConfig(BaseModel):
    """Latency is timed on the artifact's own runtime with warm-up, repeats and a fixed thread count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1)
    warmup: int = Field(20, ge=0, description="untimed runs first (batch-1 eager timings need at least 20)")
    repeats: int = Field(50, ge=3)
    threads: int = Field(1, ge=1, description="intra-op threads for torch and onnxruntime while timing")


class EvaluateConfig(BaseModel):
    """The recipe's ``evaluate:`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: Literal["val", "test"] = "test"
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    noise_levels: list[float] = Field(default_factory=lambda: [0.1, 0.3], description="Gaussian input noise std, in units of the input's std")
    max_eval_examples: int | None = Field(None, ge=1, description="cap the examples used for metrics (large text sets)")

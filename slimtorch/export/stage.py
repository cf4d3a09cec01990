"""The ``export`` stage: torch model in, onnxruntime model out, with the parity recorded."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from slimtorch.core import RunContext, Stage, StageRecord
from slimtorch.errors import UnsupportedModuleError
from slimtorch.export.onnx import max_abs_diff, resize_batch, to_ort


class ExportConfig(BaseModel):
    """Recipe entry ``- export: {opset: 17, atol: 1e-4}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    opset: int = Field(17, ge=13, le=21, description="ONNX opset version")
    atol: float = Field(1e-4, gt=0, description="largest allowed |onnxruntime - torch| on the parity batches")
    on_mismatch: Literal["error", "warn"] = Field("error", description="what to do when parity exceeds atol")
    example_batch_size: int = Field(4, ge=1, description="rows of the example batch traced by the exporter")
    threads: int = Field(1, ge=1, description="onnxruntime intra-op threads of the returned model")


def parity_check(model: nn.Module, ort_model: nn.Module, ctx: RunContext, batch_size: int) -> dict[str, float]:
    """Max |ORT − torch| on test batches of the traced size and of other sizes (dynamic axis)."""
    diffs = {}
    for n in sorted({batch_size, 1, 2 * batch_size + 1}):
        diffs[f"batch_{n}"] = max_abs_diff(model, ort_model, resize_batch(ctx.data.example_batch(n), n))
    return diffs


class ExportStage(Stage[ExportConfig], kind="export"):
    """Export to ONNX (dynamic batch axis) and return an :class:`~slimtorch.runtime.OrtModule`."""

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        cfg = self.config
        example = ctx.data.example_batch(cfg.example_batch_size)
        ort_model = to_ort(model, example, cfg.opset, cfg.threads)
        diffs = parity_check(model, ort_model, ctx, cfg.example_batch_size)
        worst = max(diffs.values())
        ort_model.meta["max_abs_diff"] = worst
        ort_model.slimtorch_spec = getattr(model, "slimtorch_spec", None)
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

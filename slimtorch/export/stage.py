"""The ``export`` stage: torch model in, onnxruntime model (or a GGUF file for llama.cpp) out, with the parity recorded."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from slimtorch.core import RunContext, Stage, StageRecord
from slimtorch.errors import RecipeError, UnsupportedModuleError
from slimtorch.export.config import ExportConfig
from slimtorch.export.executorch import PteModule, counts_of, executorch, export_pte
from slimtorch.export.gguf import GGUFCalibration, export_gguf
from slimtorch.export.gguf_recovery import recover_in_blocks
from slimtorch.export.onnx import max_abs_diff, resize_batch, to_ort
from slimtorch.models.attrs import set_attrs_
from slimtorch.quantize.ggml_blocks import BlockGrid


def parity_check(model: nn.Module, ort_model: nn.Module, ctx: RunContext, batch_size: int) -> dict[str, float]:
    """Max |ORT − torch| on test batches of the traced size and of other sizes (dynamic axis)."""
    diffs = {}
    for n in sorted({batch_size, 1, 2 * batch_size + 1}):
        diffs[f"batch_{n}"] = max_abs_diff(model, ort_model, resize_batch(ctx.data.example_batch(n), n))
    return diffs


def recovery_note(done: dict[str, Any]) -> str:
    """One line on what ``export.recover`` did: what trained, from which codes, and the held-out KL it reached."""
    kl, lora = done["heldout_kl_to_teacher"], done.get("lora")
    beside = lora is not None and not lora["through_rounding"]
    if lora is None:
        what = f"{done['matrices']} matrices trained through their rounding"
    else:
        how = "beside the rounded weights, merged and re-quantized" if beside else "trained through the rounding"
        what = f"LoRA rank {lora['rank']} on {lora['matrices']} matrices ({lora['trainable_params']:,} parameters, {how})"
    start = {"gptq": " from GPTQ's codes", "rtn_fixed": " from round-to-nearest codes"}.get(done["start"], "")
    measured = "rounded → with the float adapter" if beside else "rounded, before → after training"
    note = (f"recovered in the file's blocks{start}: {what} for {done['tokens_seen']:,} tokens; held-out KL to the original "
            f"{kl['before']:.4f} → {kl['after']:.4f} nats ({measured})")
    if "rejected_kl" in done:
        return note + (f"; as written it scored {done['rejected_kl']:.4f}, worse than its start codes, so the start codes "
                       f"({done['heldout_kl_shipped']:.4f}) were written instead: lower the rate or train longer.")
    if "codes_moved_from_start" in done:
        return note + (f", {done['heldout_kl_shipped']:.4f} as written; {100 * done['codes_moved_from_start']:.2f} % of the codes "
                       "moved from the start (grid fixed).")
    return note + f"; the writer's grid changed {100 * done['codes_moved_at_write']:.2f} % of the codes."


class ExportStage(Stage[ExportConfig], kind="export"):
    """Export to ONNX (dynamic batch axis) and return an :class:`~slimtorch.runtime.OrtModule`, or write a GGUF file.

    ``format: gguf`` returns the model as transformers reads the file back (fp32 weights, saved as the
    GGUF file itself), with its logits compared against the exported model's.
    """

    def apply(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        cfg = self.config
        if cfg.format == "gguf":
            return self._gguf(model, ctx)
        if cfg.format == "executorch":
            return self._executorch(model, ctx)
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
            self._mismatch(record, f"ONNX export differs from torch by {worst:.3g} (> atol {cfg.atol:g}); some op is not "
                                   "reproduced faithfully. Raise export.atol if this is expected, or keep runtime: torch.")
        return ort_model, record

    def _mismatch(self, record: StageRecord, message: str) -> None:
        """A parity failure: an error, or a note on the record with ``on_mismatch: warn``."""
        if self.config.on_mismatch == "error":
            raise UnsupportedModuleError(message)
        record.notes.append(message)

    def _executorch(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        cfg = self.config
        executorch("executorch.runtime")  # MissingExtraError before any work when executorch is absent
        example = ctx.data.example_batch(cfg.example_batch_size)
        calibration = [batch[0] for _, batch in zip(range(cfg.calibration_batches), ctx.data.loader("train"))] if cfg.int8 else []
        pte_model = PteModule(export_pte(model, example, cfg.int8, calibration), int8=cfg.int8, source_counts=counts_of(model, example))
        diffs = parity_check(model, pte_model, ctx, cfg.example_batch_size)
        worst = max(diffs.values())
        set_attrs_(pte_model, slimtorch_spec=getattr(model, "slimtorch_spec", None))
        record = self.record(details={
            "backend": "torch.export + to_edge_transform_and_lower (XnnpackPartitioner) + executorch.runtime",
            "int8": cfg.int8, "pte_bytes": pte_model.size_bytes, "max_abs_diff": worst, "max_abs_diff_by_batch": diffs,
        })
        atol = cfg.atol if not cfg.int8 else float("inf")  # int8 is judged by the card's metric and agreement, not atol
        if worst > atol:
            self._mismatch(record, f"the ExecuTorch program differs from torch by {worst:.3g} (> atol {cfg.atol:g}); raise "
                                   "export.atol if this is expected, or keep format: onnx.")
        return pte_model, record

    def _gguf(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, StageRecord]:
        cfg = self.config
        quant = cfg.quant or "q8_0"
        calibration = GGUFCalibration(cfg.method, cfg.calibration_examples, cfg.calibration_split, cfg.bits_per_weight, cfg.size_mb)
        recover = None
        if cfg.recover is not None:
            if ctx.teacher is None:
                raise RecipeError("export.recover distils from the original model, and this run has none; give the recipe a "
                                  "teacher (the model to compress), or remove recover.")
            settings, teacher = cfg.recover, ctx.teacher

            def recover(lm: nn.Module, matrices: dict[str, tuple[nn.Module, str]], hessians: dict[str, Tensor] | None,
                        method: str) -> tuple[dict[str, Any], dict[str, BlockGrid] | None]:
                facts, hop, grids = recover_in_blocks(lm, matrices, hessians, teacher, settings, ctx, method)
                return {**facts.to_json(), **hop}, grids

        out, details = export_gguf(model, ctx.data, ctx.stage_dir("export"), quant, cfg.check_tokens, cfg.table, calibration, recover)
        record = self.record(details=details)
        if details["recovery"]:
            record.notes.append(recovery_note(details["recovery"]))
        parity = details["parity"]
        table = f", embedding table {details['table_quant']}" if details["table_quant"] not in (None, quant) else ""
        if details["size_plan"] and cfg.quant is None:  # the size target chose every type; q8_0 only names the file type
            quant_label, table = "with the size target's types", ""
        else:
            quant_label = quant
        record.notes.append(f"GGUF {quant_label}{table} ({details['gguf_bytes'] / 1e6:.1f} MB) read back by transformers: top-1 agreement "
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
            self._mismatch(record, f"the GGUF file agrees with the model on only {parity['top1_agreement']:.3f} of next tokens "
                                   f"(< min_top1_agreement {cfg.min_top1_agreement}); store more bits (quant: q8_0) or lower "
                                   "min_top1_agreement.")
        return out, record

"""Transformer encoders for onnxruntime: how their attention is exported, and onnxruntime's transformer fusions.

``quantize: {attention: ...}`` picks the graph a Hugging Face model is quantized from:

- ``model``: the model as it runs in torch. Transformers' default attention is SDPA, which the ONNX exporter
  (opset 14+) writes as ``Mul(Q, √scale) · Mul(Kᵀ, √scale) → Softmax → Where(IsNaN, 0, ·)`` below a mask
  built by ``masking_utils`` (Range/Gather/And). onnxruntime's optimizer matches neither the split scale nor
  the NaN guard after the softmax, so it fuses no Attention node (only SkipLayerNormalization and BiasGelu).
- ``eager``: the same weights exported with eager attention (``MatMul(Q, Kᵀ) · scale + mask → Softmax →
  MatMul V``). Measured on all-MiniLM-L6-v2 (1 thread, 8 × 128 tokens, AMD EPYC with AVX-512 VNNI): dynamic int8 runs in
  0.91× the time of the SDPA export (5 and 6 layers), with the same outputs.
- ``fused``: the eager export through ``onnxruntime.transformers.optimizer`` (``model_type="bert"``), which
  then fuses every layer's attention into one ``Attention`` node plus EmbedLayerNormalization,
  SkipLayerNormalization and BiasGelu. On that CPU it was not faster than ``eager`` (fp32 1.04×, dynamic int8
  1.12× the time), so ``eager`` is what the MiniLM recipe uses; ``fused`` is there for CPUs and batch
  shapes where the fused kernels win (measure with ``benchmarks/pipeline_minilm.py``).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

from torch import nn

from slimtorch.core import Batch
from slimtorch.errors import UnsupportedModuleError
from slimtorch.export.onnx import export_onnx

log = logging.getLogger(__name__)

AttentionExport = Literal["model", "eager", "fused"]


def _hf_of(model: nn.Module) -> Any:
    hf = getattr(model, "hf", None)
    if hf is None or not hasattr(hf, "set_attn_implementation"):
        raise UnsupportedModuleError(
            f"quantize.attention 'eager'/'fused' re-exports a Hugging Face transformer's attention; this is a "
            f"{type(model).__name__}. Remove quantize.attention (or set it to 'model')."
        )
    return hf


def eager_attention_copy(model: nn.Module) -> nn.Module:
    """A deep copy of an ``HFModel`` whose attention runs (and exports) as plain MatMul/Softmax."""
    _hf_of(model)
    out = copy.deepcopy(model)
    _hf_of(out).set_attn_implementation("eager")
    return out.eval()


def fuse_transformer(onnx_bytes: bytes, num_heads: int, hidden_size: int) -> tuple[bytes, dict[str, int]]:
    """onnxruntime's BERT fusions on an eager-attention export. Returns (graph, {fused op: count}) of the ops it made."""
    from onnxruntime.transformers import optimizer

    with tempfile.TemporaryDirectory(prefix="slimtorch-ortopt-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = Path(tmp) / "eager.onnx"
        src.write_bytes(onnx_bytes)
        fused = optimizer.optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
        counts = {op: n for op, n in fused.get_fused_operator_statistics().items() if n}
        return fused.model.SerializeToString(), counts


def encoder_onnx(model: nn.Module, example: Batch, opset: int, attention: AttentionExport) -> tuple[bytes, dict[str, Any]]:
    """The fp32 ONNX graph ``quantize`` starts from, and what was done to it (for the stage's details).

    Raises:
        UnsupportedModuleError: ``eager``/``fused`` on a model that is not a Hugging Face transformer.
    """
    if attention == "model":
        return export_onnx(model, example, opset), {}
    eager = export_onnx(eager_attention_copy(model), example, opset)
    if attention == "eager":
        return eager, {"attention_export": "eager"}
    config = _hf_of(model).config
    fused, counts = fuse_transformer(eager, int(config.num_attention_heads), int(config.hidden_size))
    if not counts.get("Attention"):
        log.warning("onnxruntime's transformer optimizer fused no Attention node: %s", counts)
    return fused, {"attention_export": "fused", "fused_ops": counts}

"""Transformer encoders on onnxruntime: eager-attention export and onnxruntime's fusions (quantize.attention)."""

from __future__ import annotations

import collections

import onnx
import pytest
import torch

from slimtorch.errors import UnsupportedModuleError
from slimtorch.models import build_model
from slimtorch.quantize._ort_transformer import encoder_onnx
from slimtorch.runtime import OrtModule

TINY = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 32}


def _ops(onnx_bytes: bytes) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node)


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("hf:tiny", {"kind": "encoder", "config": TINY}).eval()


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # a padded sentence: the mask must reach the attention
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("attention", ["model", "eager", "fused"])
def test_every_attention_export_matches_torch(encoder: torch.nn.Module, batch: dict[str, torch.Tensor], attention: str) -> None:
    graph, facts = encoder_onnx(encoder, batch, 17, attention)  # type: ignore[arg-type]
    with torch.no_grad():
        expected = encoder(**batch)
    torch.testing.assert_close(OrtModule(graph)(**batch), expected, atol=1e-4, rtol=1e-4)
    ops = _ops(graph)
    if attention == "model":  # SDPA: the NaN guard after the softmax is what keeps onnxruntime from fusing it
        assert ops["IsNaN"] == 2 and facts == {}
    if attention == "eager":
        assert ops["IsNaN"] == 0 and ops["Softmax"] == 2 and facts == {"attention_export": "eager"}
    if attention == "fused":
        assert ops["Attention"] == 2 and ops["Softmax"] == 0
        assert facts["fused_ops"]["Attention"] == 2 and facts["fused_ops"]["SkipLayerNormalization"] == 4


def test_eager_export_needs_a_hugging_face_model() -> None:
    mlp = build_model("mlp", {"hidden": [8]}, input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(UnsupportedModuleError, match="re-exports a Hugging Face transformer's attention; this is a MLP"):
        encoder_onnx(mlp, torch.randn(2, 1, 8, 8), 17, "eager")


def test_fused_attention_counts_the_same_macs_as_the_eager_graph(encoder: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """onnxruntime's Attention node holds the QKV projection and both attention matmuls: counted, not skipped."""
    from slimtorch.measure.onnx_graph import onnx_macs

    eager, _ = encoder_onnx(encoder, batch, 17, "eager")  # type: ignore[arg-type]
    fused, _ = encoder_onnx(encoder, batch, 17, "fused")  # type: ignore[arg-type]
    counts = {name: onnx_macs(onnx.load_from_string(g), batch) for name, g in (("eager", eager), ("fused", fused))}
    assert counts["eager"][1] == [] and counts["fused"][1] == []
    assert counts["eager"][0] == counts["fused"][0] > 0

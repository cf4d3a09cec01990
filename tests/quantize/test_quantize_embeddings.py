"""Quantized embedding tables (``embedding_bits`` on the torch weight-only modes): lookups, ties, artifacts."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open
from torch import nn

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.models import build_model
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.quantize._torch import WeightOnlyEmbedding, WeightOnlyLinear, quantize_embeddings_, tied_linears

LLAMA = {"model_type": "llama", "vocab_size": 30522, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}


def _llama(tied: bool) -> nn.Module:
    torch.manual_seed(0)
    return build_model("hf:tiny-llama", {"kind": "causal_lm", "config": {**LLAMA, "tie_word_embeddings": tied}})


@pytest.fixture(scope="module")
def data():
    return build_data("text", args={"max_sentences": 64, "max_length": 12}, batch_size=8)


def _int4(embedding_bits: int | None, **kw: object) -> QuantizeConfig:
    return QuantizeConfig(mode="int4_weight_only", runtime="torch", group_size=32, embedding_bits=embedding_bits, **kw)


def _weight_keys(directory) -> list[str]:
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return list(f.keys())


@pytest.mark.parametrize(("bits", "max_error"), [(8, 0.01), (4, 0.15)])
def test_lookup_reads_only_the_asked_rows_of_the_packed_table(bits, max_error):
    table = torch.randn(100, 64)
    embedding = WeightOnlyEmbedding(WeightOnlyLinear.from_weight(table, None, bits, group_size=32))
    ids = torch.tensor([[3, 0, 99], [3, 42, 7]])
    rows = embedding(ids)
    assert rows.shape == (2, 3, 64) and rows.dtype == torch.float32
    torch.testing.assert_close(rows, embedding.table.dequantized_weight()[ids])  # same numbers as the matmul kernels use
    relative = ((rows - table[ids]).norm(dim=-1) / table[ids].norm(dim=-1)).max().item()
    assert relative < max_error


def test_tied_lm_head_and_embedding_share_one_int4_table_stored_once(tmp_path, data):
    model = _llama(tied=True)
    assert tied_linears(model) == {"hf.model.embed_tokens": "hf.lm_head"}
    out, record = QuantizeStage(_int4(4)).apply(model, RunContext(data=data))
    embedding, head = out.hf.model.embed_tokens, out.hf.lm_head
    assert isinstance(embedding, WeightOnlyEmbedding) and isinstance(head, WeightOnlyLinear)
    assert embedding.table is head and head.bits == 4 and embedding.tied_to == "hf.lm_head"
    assert record.details["tied_tables"] == {"hf.model.embed_tokens": "hf.lm_head"}
    assert any("hf.lm_head runs on hf.model.embed_tokens's table" in n for n in record.notes)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    expected = out(ids)
    artifact.save(out, tmp_path / "q")
    assert not [k for k in _weight_keys(tmp_path / "q") if "embed_tokens" in k]  # one table, under lm_head
    back = artifact.load(tmp_path / "q")
    torch.testing.assert_close(back(ids), expected)
    assert back.hf.model.embed_tokens.table is back.hf.lm_head
    generated = back.hf.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 9)


def test_embedding_bits_8_makes_a_tied_int4_model_run_lm_head_on_the_int8_table(data):
    out, record = QuantizeStage(_int4(8)).apply(_llama(tied=True), RunContext(data=data))
    assert out.hf.lm_head.bits == 8 and out.hf.model.embed_tokens.table is out.hf.lm_head
    assert out.hf.model.layers[0].mlp.up_proj.bits == 4  # the other Linear layers keep the mode's int4
    assert record.details["argmax_agreement"] > 0.8


def test_artifact_shrinks_with_the_table_and_float_stays_float(tmp_path, data):
    sizes = {}
    for bits in (None, 8, 4):
        out, _ = QuantizeStage(_int4(bits)).apply(_llama(tied=True), RunContext(data=data))
        artifact.save(out, tmp_path / str(bits))
        sizes[bits] = (tmp_path / str(bits) / "model.safetensors").stat().st_size
        if bits is None:
            assert type(out.hf.model.embed_tokens) is nn.Embedding
    table = LLAMA["vocab_size"] * LLAMA["hidden_size"]
    # float: fp32 table (the int4 lm_head is a second copy); int8: one byte a weight, shared; int4: half a byte plus scales
    assert sizes[None] - sizes[8] > 0.9 * (4 * table - table)
    assert sizes[8] - sizes[4] > 0.3 * table


def test_untied_model_gets_its_own_table_and_the_lm_head_keeps_the_mode(tmp_path, data):
    out, record = QuantizeStage(_int4(8)).apply(_llama(tied=False), RunContext(data=data))
    embedding = out.hf.model.embed_tokens
    assert embedding.tied_to is None and embedding.table is not out.hf.lm_head and out.hf.lm_head.bits == 4
    assert record.details["tied_tables"] == {}
    ids = torch.tensor([[1, 2, 3]])
    artifact.save(out, tmp_path / "q")
    assert "hf.model.embed_tokens.table.qweight" in _weight_keys(tmp_path / "q")
    torch.testing.assert_close(artifact.load(tmp_path / "q")(ids), out(ids))


def test_excluded_or_ungroupable_tables_stay_float():
    model = nn.Sequential(nn.Embedding(50, 64), nn.Embedding(50, 48))
    done, skipped = quantize_embeddings_(model, 4, 32, ties={})
    assert done == ["0"] and skipped == ["1"] and type(model[1]) is nn.Embedding  # 48 is not a multiple of 32
    model = nn.Sequential(nn.Embedding(50, 64))
    assert quantize_embeddings_(copy.deepcopy(model), 8, 32, ties={}, exclude=["0"]) == ([], ["0"])


def test_embedding_bits_is_checked_per_runtime():
    assert QuantizeConfig(mode="int8_weight_only", runtime="torch", embedding_bits=None).embedding_bits is None
    with pytest.raises(ValidationError, match="embedding_bits: null .* applies to the torch weight-only modes"):
        QuantizeConfig(mode="dynamic_int8", runtime="onnxruntime", embedding_bits=None)
    with pytest.raises(ValidationError, match="embedding_bits: 4 applies to mode: dynamic_int8 with runtime: onnxruntime"):
        QuantizeConfig(mode="bf16", runtime="torch", embedding_bits=4)

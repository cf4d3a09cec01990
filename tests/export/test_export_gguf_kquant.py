"""K-quant GGUF export (Q4_K/Q5_K/Q6_K, llama.cpp's _M mixes, a size target) of a tiny LLaMA with 256-wide rows."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from slimtorch.core import RunContext
from slimtorch.export import ExportConfig, ExportStage
from slimtorch.export.gguf import FILE_TYPES, permute_rows
from slimtorch.measure import llamacpp
from slimtorch.measure.config import LLMEvalConfig
from slimtorch.measure.llm import causal_lm_of, scored_logprobs, windows

gguf = pytest.importorskip("gguf")


def _export(tiny, name, **cfg):
    model, data, root = tiny
    out, record = ExportStage(ExportConfig(format="gguf", min_top1_agreement=0.0, calibration_examples=32, **cfg)).apply(
        copy.deepcopy(model), RunContext(data=data, work_dir=root / name))
    return out, record, root / name / "00_export" / "model.gguf"


def _tensors(path):
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def test_q4_k_m_writes_llama_cpp_s_mix_and_transformers_reads_the_blocks_the_gguf_dequantizer_reads(tiny256):
    out, record, path = _export(tiny256, "q4_k_m", quant="q4_k_m")
    tensors = _tensors(path)
    kinds = {name: t.tensor_type.name for name, t in tensors.items()}
    assert kinds["blk.1.attn_v.weight"] == kinds["blk.1.ffn_down.weight"] == "Q6_K"  # the last eighth of 2 layers: more bits
    assert kinds["blk.0.attn_v.weight"] == kinds["blk.0.attn_q.weight"] == kinds["blk.1.ffn_up.weight"] == "Q4_K"
    assert kinds["output.weight"] == "Q6_K" and kinds["token_embd.weight"] == "Q4_K"
    assert record.details["tensor_types"] == {"f32": 5, "q4_k": 13, "q6_k": 3}
    hf = out.hf.model
    for name, module, heads in [("blk.1.ffn_down", hf.layers[1].mlp.down_proj, None), ("blk.0.attn_v", hf.layers[0].self_attn.v_proj, None),
                                ("blk.1.attn_q", hf.layers[1].self_attn.q_proj, 4)]:
        t = tensors[f"{name}.weight"]
        theirs = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)  # (N, K)
        ours = module.weight.detach().float()
        ours = permute_rows(ours, heads) if heads else ours  # transformers undoes llama.cpp's RoPE row order
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-6)
    assert 4.5 < record.details["bits_per_weight"] < 5.5


def test_gptq_on_the_block_grid_reads_back_closer_to_the_float_model_than_rounding(tiny256):
    _, rtn, _ = _export(tiny256, "q4_k_rtn", quant="q4_k")
    _, gptq, _ = _export(tiny256, "q4_k_gptq", quant="q4_k", method="gptq")
    assert gptq.details["gptq_tensors"] == 16 and rtn.details["gptq_tensors"] == 0
    assert gptq.details["parity"]["kl_nats"] < 0.9 * rtn.details["parity"]["kl_nats"]
    assert any("GPTQ on the stored block grid" in note for note in gptq.notes)


def test_a_bits_per_weight_target_allocates_types_within_the_budget(tiny256):
    _, record, path = _export(tiny256, "bpw", quant="q4_k", bits_per_weight=5.2)
    plan = record.details["size_plan"]
    assert plan["bits_per_weight"] <= 5.2 and record.details["bits_per_weight"] <= 5.2 + 1e-9
    assert len(plan["tensors_by_type"]) >= 2 and set(plan["tensors_by_type"]) <= {"q4_k", "q5_k", "q6_k", "q8_0"}
    assert {t.name: t.tensor_type.name.lower() for t in _tensors(path).values() if len(t.shape) == 2} == {
        f"{name}.weight": kind for name, kind in plan["types"].items()}
    assert _file_type_label(path) == FILE_TYPES["q4_k"]  # most of the layers' weights stay q4_k here
    with pytest.raises(ValueError, match="raise the target"):
        _export(tiny256, "too_small", quant="q4_k", bits_per_weight=3.0)


def _file_type_label(path):
    return gguf.GGUFReader(str(path)).fields["general.file_type"].contents()


def test_a_size_target_s_file_type_label_names_the_type_holding_most_layer_weights(tiny256):
    _, _, path = _export(tiny256, "bpw_high", quant="q4_k", bits_per_weight=6.6)
    weights: dict[str, int] = {}
    for t in _tensors(path).values():
        if len(t.shape) == 2 and not t.name.startswith(("token_embd", "output")):
            weights[t.tensor_type.name.lower()] = weights.get(t.tensor_type.name.lower(), 0) + int(np.prod(t.shape))
    dominant = max(weights, key=weights.__getitem__)
    assert dominant != "q4_k"  # the target moved most weights off the quant option, so the label must follow them
    assert _file_type_label(path) == FILE_TYPES[dominant]


def test_gguf_only_options_are_refused_elsewhere_and_targets_are_exclusive():
    with pytest.raises(ValidationError, match="applies to GGUF files"):
        ExportConfig(bits_per_weight=4.5)
    with pytest.raises(ValidationError, match="not both"):
        ExportConfig(format="gguf", bits_per_weight=4.5, size_mb=10)
    with pytest.raises(ValidationError):
        ExportConfig(format="gguf", quant="q3_k")


@pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python not installed (pip install 'slimtorch[llamacpp]')")
@pytest.mark.parametrize("quant", ["q4_k_m", "q5_k_m", "q6_k"])
def test_llama_cpp_scores_the_k_quant_file_as_torch_scores_its_weights(tiny256, quant):
    out, _, path = _export(tiny256, f"llama_{quant}", quant=quant, method="gptq")
    cfg = LLMEvalConfig(window=64, stride=32, prefill_tokens=32, decode_tokens=8, decode_repeats=1)
    ids = torch.tensor((list(range(3, 250)) * 2)[:300])
    nll, _, _ = scored_logprobs(causal_lm_of(out), ids, cfg)
    facts = llamacpp.measure_gguf(path, ids.tolist(), windows(len(ids), cfg.window, cfg.stride), cfg, [1])
    # llama.cpp multiplies K-quant blocks with 8-bit activations: close to, not exactly, torch on the dequantized weights
    # (the random tiny model's perplexity is in the thousands: its mean NLL is compared).
    assert facts.nll == pytest.approx(nll.mean().item(), rel=0.01)

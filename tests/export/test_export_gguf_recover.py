"""Recovery in the file's blocks (export.recover): token KD through GGUF block rounding, then the same rounding written."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from slimtorch.core import RunContext
from slimtorch.errors import RecipeError
from slimtorch.export import ExportConfig, ExportStage
from slimtorch.export.gguf import check_ids
from slimtorch.export.gguf_recovery import GGUFFakeQuant, fake_quantized
from slimtorch.measure.llm import causal_lm_of
from slimtorch.quantize.ggml_blocks import block_grid

gguf = pytest.importorskip("gguf")

RECOVER = {"max_steps": 40, "lr": 3e-4, "epochs": 20, "patience": None, "tokens": {"seq_tokens": 32, "heldout_sequences": 4},
           "batch_size": 4}


def _export(tiny, name, teacher=True, **cfg):
    model, data, root = tiny
    ctx = RunContext(data=data, work_dir=root / name, teacher=copy.deepcopy(model) if teacher else None)
    return ExportStage(ExportConfig(format="gguf", min_top1_agreement=0.0, **cfg)).apply(copy.deepcopy(model), ctx)


def _kl_to(teacher, model, ids):
    with torch.no_grad():
        p = torch.log_softmax(causal_lm_of(teacher).hf(ids).logits.float(), -1)
        q = torch.log_softmax(causal_lm_of(model).hf(ids).logits.float(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_the_fake_quantized_weight_is_the_block_rounding_and_passes_the_gradient_straight_through():
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 8, bias=False)
    with fake_quantized({"blk.0.attn_q": (layer, "q4_k")}, None):
        grid = block_grid(layer.parametrizations["weight"].original, "q4_k")
        w = layer.parametrizations["weight"].original
        assert torch.equal(layer.weight, grid.dequantize(grid.codes(w.detach())))
        layer(torch.randn(3, 256)).sum().backward()
        assert w.grad is not None and w.grad.abs().sum() > 0  # d(rounded)/dW = 1
    assert not hasattr(layer, "parametrizations") and isinstance(layer.weight, torch.nn.Parameter)  # float weights back


def test_the_grid_is_chosen_again_every_few_passes():
    fake = GGUFFakeQuant("q4_0", every=2)
    w = torch.randn(4, 64)
    fake(w)
    first = fake.grid
    fake(w * 3)  # same grid: codes clamp
    assert fake.grid is first
    fake(w * 3)
    assert fake.grid is not first


def test_recovery_brings_the_written_file_closer_to_the_original_than_rounding_alone(tiny256):
    model, data, _ = tiny256
    _, plain = _export(tiny256, "rtn", quant="q4_0")
    out, record = _export(tiny256, "recover", quant="q4_0", recover=RECOVER)
    done = record.details["recovery"]
    assert done["matrices"] == 16 and done["types"] == {"q4_0": 14, "q8_0": 2}  # 14 layer matrices; table and tied output in q8_0
    assert done["heldout_kl_to_teacher"]["after"] < done["heldout_kl_to_teacher"]["before"]
    assert done["codes_moved_at_write"] < 0.05
    assert any("recovered in the file's blocks" in note for note in record.notes)
    # the file itself: what transformers reads back from it is nearer the original on the test text than the rounded-only file
    ids = check_ids(causal_lm_of(model), data, 64)[None]
    rtn_file, _ = _export(tiny256, "rtn_again", quant="q4_0")
    assert _kl_to(model, out, ids) < _kl_to(model, rtn_file, ids)
    assert plain.details["recovery"] is None


def test_recovery_trains_each_matrix_in_the_type_the_mix_gives_it_and_the_file_holds_those_types(tiny256):
    _, record = _export(tiny256, "recover_k", quant="q4_k_m", recover={**RECOVER, "max_steps": 8})
    done = record.details["recovery"]
    # every matrix trained in the type the file stores it as (llama.cpp's Q4_K_M rule: Q6_K for some attn_v/ffn_down and the output)
    assert done["types"] == {"q4_k": 13, "q6_k": 3} and record.details["tensor_types"] == {"f32": 5, **done["types"]}
    assert done["codes_moved_at_write"] < 0.05


def test_recover_is_refused_where_it_cannot_reach_the_file(tiny256):
    with pytest.raises(ValidationError, match="add format: gguf"):
        ExportConfig(recover={})
    with pytest.raises(ValidationError, match="rank"):
        ExportConfig(format="gguf", recover={"lora": {"rank": 0}})
    with pytest.raises(ValidationError, match="extra"):
        ExportConfig(format="gguf", recover={"lora": {"r": 8}})
    with pytest.raises(ValidationError, match="stores floats"):
        ExportConfig(format="gguf", quant="f16", recover={})
    with pytest.raises(RecipeError, match="has none; give the recipe a teacher"):
        _export(tiny256, "no_teacher", teacher=False, quant="q4_0", recover=RECOVER)
    assert ExportConfig(format="gguf", recover={}).stage_tags().trains


def test_the_cli_runs_a_recipe_whose_export_recovers_in_blocks(tiny256, tmp_path, monkeypatch):
    import subprocess
    import sys

    import yaml

    _, _, root = tiny256
    monkeypatch.setenv("SLIMTORCH_CACHE", str(root / "cache"))
    recipe = {"name": "recover", "data": {"source": "text", "args": {"path": str(root / "text.txt")}, "batch_size": 4},
              "teacher": {"model": f"gguf:{root / 'tiny.gguf'}"},
              "stages": [{"export": {"format": "gguf", "quant": "q4_0", "min_top1_agreement": 0.0,
                                     "recover": {**RECOVER, "max_steps": 8}}}],
              "evaluate": {"latency": {"batch_sizes": [1], "warmup": 1, "repeats": 3},
                           "llm": {"window": 32, "stride": 16, "max_tokens": 64, "prefill_tokens": 16, "decode_tokens": 3,
                                   "decode_repeats": 1, "decode_batch_sizes": [1], "sample_tokens": 4}}}
    path = tmp_path / "recover.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = subprocess.run([sys.executable, "-m", "slimtorch.cli", "compress", str(path), "--out", str(tmp_path / "run")],
                          check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "recovered in the file's blocks: 16 matrices" in report
    # a recover block on an ONNX export is refused before any work, with exit code 2 and no traceback
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**recipe, "stages": [{"export": {"recover": {}}}]}))
    refused = subprocess.run([sys.executable, "-m", "slimtorch.cli", "compress", str(bad), "--out", str(tmp_path / "bad")],
                             check=False, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "add format: gguf" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr


def test_a_recovery_from_gptq_codes_keeps_their_grid_and_the_file_holds_exactly_the_rounding_trained_through(tiny256):
    _, record = _export(tiny256, "recover_gptq", quant="q4_k_m", method="gptq", calibration_examples=16,
                          recover={**RECOVER, "max_steps": 8})
    done = record.details["recovery"]
    assert done["start"] == "gptq" and done["codes_moved_at_write"] == 0.0
    assert 0 < done["codes_moved_from_start"] < 0.2
    kl = done["heldout_kl_to_teacher"]
    # trained and written through one fixed grid: the held-out KL after training is the KL of the weights as written
    assert done["heldout_kl_shipped"] == pytest.approx(kl["after"], rel=1e-3)
    assert kl["after"] < kl["before"]
    assert any("from GPTQ's codes" in note for note in record.notes)


def test_the_writer_rounds_on_the_grids_it_is_given_so_weights_on_them_read_back_unchanged(tiny256):
    from slimtorch.export.gguf import _trainable_matrices, read_back, source_gguf, tensor_plan, write_gguf
    from slimtorch.export.gguf_recovery import round_onto_grids_, start_on_grids

    model, _, root = tiny256
    lm = causal_lm_of(copy.deepcopy(model))
    plan, _ = tensor_plan(lm, "q4_k_m", None, None, None)
    matrices = _trainable_matrices(lm, plan)
    grids, start = start_on_grids(matrices, None, "rtn")
    with torch.no_grad():
        q = lm.hf.model.layers[0].self_attn.q_proj.weight  # a permuted (query) matrix: its grid rows move with it
        q.add_(0.3 * q.std() * torch.randn_like(q))
    moved = round_onto_grids_(matrices, grids, start)
    assert 0 < moved < 0.5
    written = write_gguf(lm, root / "on_grids.gguf", "q4_k_m", source_gguf(model), plan=plan, grids=grids)
    back = read_back(written.path, lm.tokenizer)
    for name in ("q_proj", "k_proj", "v_proj"):
        mine = getattr(lm.hf.model.layers[0].self_attn, name).weight
        theirs = getattr(back.hf.model.layers[0].self_attn, name).weight
        torch.testing.assert_close(theirs, mine, rtol=0, atol=1e-6)
    torch.testing.assert_close(back.hf.model.layers[1].mlp.down_proj.weight, lm.hf.model.layers[1].mlp.down_proj.weight,
                               rtol=0, atol=1e-6)


def test_a_low_rank_update_inside_the_rounding_merges_exactly_into_codes_on_the_fixed_grid():
    from slimtorch.export.config import RecoverLora
    from slimtorch.export.gguf_recovery import low_rank_through_rounding

    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 16, bias=False)
    grid = block_grid(layer.weight, "q4_0")
    with torch.no_grad():
        layer.weight.copy_(grid.dequantize(grid.codes(layer.weight)))
    base = layer.weight.detach().clone()
    with low_rank_through_rounding({"blk.0.attn_q": (layer, "q4_0")}, {"blk.0.attn_q": grid}, RecoverLora(rank=2, lora_alpha=4)) as n:
        assert n == 2 * (64 + 16)
        update = layer.parametrizations["weight"][0]
        torch.testing.assert_close(layer.weight, base)  # B starts at zero: the start codes
        with torch.no_grad():
            update.lora_B.normal_(0, 0.5)
        trained = layer.weight.detach().clone()
        layer(torch.randn(3, 64)).sum().backward()
        assert update.lora_B.grad is not None and update.lora_A.grad is not None  # straight through the rounding
    merged = base + update.scaling * update.lora_B.detach() @ update.lora_A.detach()
    torch.testing.assert_close(layer.weight, grid.dequantize(grid.codes(merged)))  # round(W + s·B·A) on the start's grid
    torch.testing.assert_close(layer.weight, trained)
    assert not torch.equal(layer.weight, base) and not hasattr(layer, "parametrizations")


# The tiny model's weights are ~10x wider than a trained LM's (std 0.2), so are its rounding steps: adapters starting at zero
# move no code at a trained LM's rate, and through the rounding they flip many at once at a larger one. The record and the
# guard (a file never worse than its start codes) are what these check; docs/LLM.md has the SmolLM2 figures.
@pytest.mark.parametrize("through_rounding", [True, False])
def test_lora_recovery_trains_adapters_only_and_merges_them_into_the_codes(tiny256, through_rounding):
    torch.manual_seed(0)
    lora = {"rank": 8, "lora_alpha": 32, "through_rounding": through_rounding}
    _, record = _export(tiny256, f"recover_lora_{through_rounding}", quant="q4_0",
                          recover={**RECOVER, "max_steps": 30, "lr": 5e-3, "lora": lora})
    done = record.details["recovery"]
    facts = done["lora"]
    # 14 layer matrices (7 per block) adapted: rank 8 · (in + out) each; the table and output keep their start codes
    hidden, ffn, kv = 256, 512, 128
    shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (ffn, hidden), (ffn, hidden), (hidden, ffn)]
    assert facts["matrices"] == 14 and facts["trainable_params"] == 2 * sum(8 * (o + i) for o, i in shapes)
    assert done["start"] == "rtn_fixed" and facts["through_rounding"] is through_rounding
    kl = done["heldout_kl_to_teacher"]
    assert done["heldout_kl_shipped"] <= kl["before"]  # never worse than the start codes
    if through_rounding:  # the merge is exact: the model as written is the model trained (or, if that was worse, the start)
        assert done.get("rejected_kl", done["heldout_kl_shipped"]) == pytest.approx(kl["after"], rel=1e-3)
    else:  # the float adapter learns; the record keeps its KL beside the KL as written
        assert facts["heldout_kl_with_adapter"] == kl["after"] < kl["before"]
    assert any("LoRA rank 8 on 14 matrices" in note for note in record.notes)

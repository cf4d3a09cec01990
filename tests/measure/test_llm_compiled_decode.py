"""Compiled decoding (``evaluate.llm.compile``) on a tiny random LLaMA: same greedy tokens as eager, in the report card."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from slimtorch.data import build_data
from slimtorch.measure import EvaluateConfig, LatencyConfig, measure, outputs_on
from slimtorch.measure.config import LLMEvalConfig
from slimtorch.measure.llm import compiled_decode_kwargs, forget_foreign_compiled_call_
from slimtorch.quantize import _torch
from slimtorch.report.card import Report
from slimtorch.report.markdown import render_markdown
from tests.tiny_llm import load_tiny_gguf, write_text

pytest.importorskip("gguf")

FAST = LLMEvalConfig(window=32, stride=16, max_tokens=64, kl_tokens=16, prefill_tokens=8, prefill_repeats=3,
                     decode_tokens=4, decode_repeats=1, decode_batch_sizes=[1], sample_tokens=4, compile=True)
CONFIG = EvaluateConfig(latency=LatencyConfig(batch_sizes=[1], warmup=1, repeats=3), llm=FAST)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_compiled")
    model = load_tiny_gguf(root)
    data = build_data("text", args={"path": str(write_text(root / "text.txt", repeat=1))})
    return model, data


def _int4_int8_copy(model):
    """int4 Linear layers (group 32) and the tied table int8: the weight-only layers a compiled decode must trace."""
    out = copy.deepcopy(model)
    ties = _torch.tied_linears(out)
    chosen, _ = _torch.select_linears(out, exclude=list(ties.values()), multiple_of=32)
    _torch.weight_only_(out, chosen, bits=4, group_size=32)
    _torch.quantize_embeddings_(out, 8, 32, ties)
    return out


@torch.inference_mode()
def _greedy(model, ids, n, **extra):
    return model.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0, **extra)[0, ids.shape[1]:].tolist()


@pytest.mark.slow  # compiling takes ~30 s here
def test_compiled_decode_of_weight_only_layers_gives_the_eager_greedy_tokens(tiny):
    model = _int4_int8_copy(tiny[0])
    ids = torch.tensor([[5, 70, 71, 72, 9, 40, 41, 42]])
    eager = _greedy(model, ids, 12)
    forget_foreign_compiled_call_(model.hf)
    compiled = _greedy(model, ids, 12, **compiled_decode_kwargs(ids.shape[1] + 12))
    assert compiled == eager
    assert hasattr(model.hf, "_compiled_call")  # generate did take the compiled path


def test_a_deep_copy_does_not_decode_with_the_originals_compiled_forward(tiny):
    model = tiny[0]
    forget_foreign_compiled_call_(model.hf)
    model.hf._compiled_call = "compiled for the original"  # what transformers leaves on a model it compiled
    copied = copy.deepcopy(model)
    forget_foreign_compiled_call_(copied.hf)
    forget_foreign_compiled_call_(model.hf)
    assert not hasattr(copied.hf, "_compiled_call") and model.hf._compiled_call == "compiled for the original"
    del model.hf._compiled_call


@pytest.mark.slow  # compiling takes ~30 s here
def test_report_card_keeps_compiled_and_eager_decode_apart(tiny):
    model, data = tiny
    reference = outputs_on(model, data, CONFIG)
    m = measure(model, name="original", stage="teacher", data=data, config=CONFIG, baseline_outputs=reference)
    assert m.llm is not None and m.llm.setup.decode == "compiled"
    assert m.llm.decode_eager_tokens_per_s is not None and m.llm.compile_s is not None
    assert m.decode_tokens_per_s["1"] > 0 and m.llm.decode_eager_tokens_per_s["1"] > 0
    assert m.llm.compile_s["1"] > 0
    report = Report.create(recipe={"name": "llm"}, baseline="original", final="original", models=[m]).to_json()
    card = Report.from_json(json.loads(json.dumps(report)))
    md = render_markdown(card)
    assert "decode tok/s b1 (compiled)" in md and "eager tok/s b1" in md and "torch.compile" in md


def test_compile_must_be_a_boolean():
    with pytest.raises(ValueError, match="compile"):
        LLMEvalConfig(compile="sometimes")


def test_a_recipe_with_a_bad_compile_value_is_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from slimtorch.cli import app

    path = tmp_path / "r.yaml"
    path.write_text("name: r\nteacher: {model: mlp}\nstages: []\nevaluate: {llm: {compile: sometimes}}\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "compile" in lines[0], result.stderr

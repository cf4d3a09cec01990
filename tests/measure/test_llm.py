"""The causal-LM report card on a tiny random LLaMA read from a GGUF file (real tokenizer, real transformers)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from slimtorch.cli import app
from slimtorch.data import build_data
from slimtorch.measure import EvaluateConfig, LatencyConfig, measure, outputs_on
from slimtorch.measure.config import LLMEvalConfig
from slimtorch.measure.llm import LLMReference, eval_token_ids, scored_logprobs, windows
from slimtorch.models import build_model
from slimtorch.quantize import _torch
from slimtorch.report.card import Report
from slimtorch.report.markdown import render_markdown
from slimtorch.report.schema import validate_report
from tests.tiny_llm import write_text, write_tiny_gguf

pytest.importorskip("gguf")

FAST = LLMEvalConfig(window=32, stride=16, max_tokens=200, kl_tokens=64, prefill_tokens=16, prefill_repeats=3,
                     decode_tokens=4, decode_repeats=1, sample_tokens=4)
CONFIG = EvaluateConfig(latency=LatencyConfig(batch_sizes=[1, 2], warmup=1, repeats=3), llm=FAST)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMTORCH_CACHE", str(root / "cache"))
        gguf_file = write_tiny_gguf(root / "tiny.gguf")
        model = build_model(f"gguf:{gguf_file}")
    data = build_data("text", args={"path": str(write_text(root / "text.txt", repeat=1))})
    return model, data, gguf_file, root


@pytest.mark.parametrize("n,window,stride", [(10, 4, 2), (100, 32, 16), (7, 50, 10), (33, 8, 7)])
def test_windows_score_every_token_once_with_context(n, window, stride):
    scored = [t for begin, end, first in windows(n, window, stride) for t in range(first, end)]
    assert scored == list(range(1, n))
    for begin, end, first in windows(n, window, stride):
        assert end - begin <= window and (begin == 0 or first - begin >= window - stride)


def test_perplexity_equals_the_models_own_loss_when_one_window_holds_the_text(setup):
    model, data, _, _ = setup
    ids = eval_token_ids(model, data, "test", 60)
    nll, top1, logprobs = scored_logprobs(model, ids, FAST.model_copy(update={"window": 64, "stride": 64}))
    with torch.inference_mode():
        loss = model.hf(input_ids=ids[None], labels=ids[None]).loss
    torch.testing.assert_close(nll.mean(), loss, atol=1e-4, rtol=1e-4)
    assert len(top1) == len(ids) - 1 and logprobs.dtype == torch.float16


def test_llm_report_card_against_the_original_and_int4(setup, tmp_path):
    model, data, _, _ = setup
    reference = outputs_on(model, data, CONFIG)
    assert isinstance(reference, LLMReference) and len(reference.samples) == 3
    same = measure(model, name="original", stage="teacher", data=data, config=CONFIG, baseline_outputs=reference)
    assert same.metrics["token_agreement"] == 1.0 and abs(same.metrics["kl_to_original"]) < 1e-3
    assert same.metrics["perplexity"] > 1 and set(same.decode_tokens_per_s) == {"1", "8"}
    assert all(v > 0 for v in same.decode_tokens_per_s.values()) and same.llm is not None
    assert same.llm.prefill_ms is not None and same.llm.prefill_ms.p50 > 0 and same.llm.samples == reference.samples

    quantized = _int4_copy(model)
    q = measure(quantized, name="int4", stage="quantize", data=data, config=CONFIG, baseline_outputs=reference)
    assert q.metrics["kl_to_original"] > 0 and q.metrics["token_agreement"] < 1.0
    report = Report.create(recipe={"name": "llm"}, baseline="original", final="int4", models=[same, q]).to_json()
    validate_report(json.loads(json.dumps(report)))
    assert report["models"][1]["decode_tokens_per_s"]["1"] > 0 and "perplexity" in report["models"][1]["metrics"]
    md = render_markdown(Report.from_json(report))
    assert "## Language model" in md and "### Greedy samples" in md and "The capital of France is" in md


def _int4_copy(model):
    import copy

    out = copy.deepcopy(model)
    chosen, _ = _torch.select_linears(out, multiple_of=32)
    return _torch.weight_only_(out, chosen, bits=4, group_size=32)


def test_cli_measure_text_file(setup, tmp_path, monkeypatch):
    _, _, gguf_file, root = setup
    monkeypatch.setenv("SLIMTORCH_CACHE", str(root / "cache"))
    result = CliRunner().invoke(app, ["measure", f"gguf:{gguf_file}", "--data", "text", "--data-args",
                                      json.dumps({"path": str(root / "text.txt")}), "--batch-sizes", "1", "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["models"][0]["metrics"]["perplexity"] > 1 and "1" in report["models"][0]["decode_tokens_per_s"]
    assert f"ppl {report['models'][0]['metrics']['perplexity']:.2f}" in result.output  # the table's metric column


def test_cli_refuses_data_args_that_are_not_an_object(setup):
    result = CliRunner().invoke(app, ["measure", "mlp", "--data-args", "[1, 2]"])
    assert result.exit_code == 2 and "--data-args must be a JSON object" in result.output


def test_non_text_data_is_refused_for_a_causal_lm(setup, digits):
    from slimtorch.errors import DataError

    model = setup[0]
    with pytest.raises(DataError, match="measured on text"):
        outputs_on(model, digits, CONFIG)


def test_stride_must_leave_windows_overlapping():
    with pytest.raises(ValueError, match="must be < window"):
        LLMEvalConfig(window=64, stride=64)

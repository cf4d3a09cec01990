"""A GGUF file scored and timed by llama.cpp itself (the llamacpp extra), beside torch's figures for the same tokens."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest
import torch

from slimtorch.measure import llamacpp
from slimtorch.measure.config import LLMEvalConfig
from slimtorch.measure.llm import causal_lm_of, scored_logprobs, windows
from tests.tiny_llm import load_tiny_gguf, write_text

pytest.importorskip("gguf")
needs_llamacpp = pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python not installed (pip install 'slimtorch[llamacpp]')")


@needs_llamacpp
def test_llamacpp_scores_the_file_as_torch_scores_the_same_weights(tmp_path):
    model = load_tiny_gguf(tmp_path)  # f32 weights: both runtimes compute the same function
    cfg = LLMEvalConfig(window=64, stride=32, prefill_tokens=32, decode_tokens=8, decode_repeats=2)
    ids = torch.tensor((list(range(3, 250)) * 2)[:300])
    nll, _, _ = scored_logprobs(causal_lm_of(model), ids, cfg)
    facts = llamacpp.measure_gguf(tmp_path / "tiny.gguf", ids.tolist(), windows(len(ids), cfg.window, cfg.stride), cfg, [1, 2])
    assert facts.scored_tokens == len(nll) == 299 and facts.threads is not None
    assert facts.perplexity == pytest.approx(math.exp(nll.mean().item()), rel=1e-3)
    for count in ("1", "2"):
        assert facts.threads[count].prefill_tokens_per_s > 0 and facts.threads[count].decode_tokens_per_s > 0


@pytest.mark.parametrize("installed", [True, False])
def test_a_gguf_run_reports_llamacpp_rows_or_says_how_to_get_them(tmp_path, monkeypatch, installed):
    from slimtorch.report import render_markdown
    from slimtorch.run.pipeline import compress

    if installed and not llamacpp.available():
        pytest.skip("llama-cpp-python not installed (pip install 'slimtorch[llamacpp]')")
    if not installed:  # as on a machine without the extra
        monkeypatch.setattr(llamacpp, "available", lambda: False)
    monkeypatch.setenv("SLIMTORCH_CACHE", str(tmp_path / "cache"))
    load_tiny_gguf(tmp_path)
    recipe = {"name": "gguf", "data": {"source": "text", "args": {"path": str(write_text(tmp_path / "text.txt", 4))}, "batch_size": 4},
              "teacher": {"model": f"gguf:{tmp_path / 'tiny.gguf'}"},
              "stages": [{"export": {"format": "gguf", "quant": "q8_0"}}],
              "evaluate": {"latency": {"batch_sizes": [1], "warmup": 1, "repeats": 3},
                           "llm": {"window": 32, "stride": 16, "max_tokens": 64, "prefill_tokens": 16, "decode_tokens": 3,
                                   "decode_repeats": 1, "decode_batch_sizes": [1], "sample_tokens": 4}}}
    report = compress(recipe, tmp_path / "run").report
    final = report.final_model
    assert final.llm is not None and final.llm.llamacpp is not None
    facts = final.llm.llamacpp
    markdown = render_markdown(report)
    assert "### In llama.cpp" in markdown
    teacher = report.models[0].llm
    assert teacher is not None and teacher.llamacpp is None  # the torch teacher is not a GGUF file
    if not installed:
        assert facts.skipped is not None and "pip install 'slimtorch[llamacpp]'" in facts.skipped and facts.skipped in markdown
        assert facts.to_json() == {"skipped": facts.skipped}  # report.json: only why
        return
    # q8_0 rounding: llama.cpp's perplexity of the file is close to torch's of the same file read back
    assert facts.perplexity == pytest.approx(final.metrics["perplexity"], rel=0.02)
    assert facts.threads is not None and set(facts.threads) >= {"1"} and "prefill / decode tok/s, 1 thread" in markdown


def test_a_file_is_dropped_from_the_page_cache_before_llama_cpp_reads_it_and_keeps_its_bytes(tmp_path):
    path = tmp_path / "model.gguf"
    payload = bytes(range(256)) * 4096 * 4  # 4 MiB, just written: in the page cache
    path.write_bytes(payload)
    llamacpp.drop_from_page_cache(path)
    assert path.read_bytes() == payload
    llamacpp.drop_from_page_cache(tmp_path / "missing.gguf")  # nothing to drop: llama.cpp's own open reports the file
    if not sys.platform.startswith("linux") or shutil.which("fincore") is None:
        return
    filesystem = subprocess.run(["stat", "-f", "-c", "%T", str(path)], check=False, capture_output=True, text=True).stdout.strip()
    if filesystem in ("tmpfs", "ramfs"):  # memory is the file's only home there: nothing to drop
        return
    llamacpp.drop_from_page_cache(path)  # the read above cached it again
    resident = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], check=True, capture_output=True,
                              text=True)
    assert int(resident.stdout.strip()) < len(payload)

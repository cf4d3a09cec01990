"""Measurement JSON round-trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slimtorch.errors import ArtifactError
from slimtorch.measure import Measurement
from slimtorch.measure.measurement import LatencyStats, LlamaCppFacts, LLMFacts, LLMSetup

finite = st.floats(0, 1e6, allow_nan=False)
latency = st.fixed_dictionaries({"p50": finite, "p90": finite, "mean": finite, "std": finite, "repeats": st.integers(1, 99)})


@given(
    name=st.text(min_size=1, max_size=12), params=st.integers(0, 10**9), size=st.none() | st.integers(0, 10**10),
    macs=st.none() | st.integers(0, 10**12), lat=st.dictionaries(st.sampled_from(["1", "8", "64"]), latency, max_size=3),
    acc=st.floats(0, 1), agreement=st.none() | st.floats(0, 1),
)
def test_json_round_trip(name, params, size, macs, lat, acc, agreement):
    m = Measurement(name=name, stage="s", params=params, nonzero_params=params // 2, size_bytes=size,
                    compressed_bytes=None, macs=macs, runtime="torch", threads=1,
                    latency_ms={b: LatencyStats(**t) for b, t in lat.items()},
                    metrics={"accuracy": acc, "per_class_accuracy": {"0": acc}}, agreement=agreement,
                    robustness={"noise_0.1": acc}, notes=["n"], seconds=1.5)
    again = Measurement.from_json(json.loads(json.dumps(m.to_json())))
    assert again == m
    assert again.primary_metric == ("accuracy", acc)


def test_missing_field_raises():
    with pytest.raises(ArtifactError, match="lacks macs.*Re-run the measurement"):
        Measurement.from_json({"name": "x", "stage": "s", "params": 1, "nonzero_params": 1, "size_bytes": None,
                               "compressed_bytes": None, "runtime": "torch", "threads": 1, "latency_ms": {},
                               "metrics": {}, "agreement": None, "robustness": {}})


def test_entry_must_be_an_object():
    with pytest.raises(ArtifactError, match="must be an object"):
        Measurement.from_json(["not", "a", "dict"])  # type: ignore[arg-type]


def _entry(**fields):
    return {"name": "lm", "stage": "teacher", "params": 1, "nonzero_params": 1, "size_bytes": None, "compressed_bytes": None,
            "macs": None, "runtime": "torch", "threads": 1, "latency_ms": {}, "metrics": {"perplexity": 3.0}, "agreement": None,
            "robustness": {}, "notes": [], "seconds": 0.5, "cost_s": {}, "decode_tokens_per_s": {"1": 10.0}, "llm": {},
            "device": "cpu", "peak_memory_bytes": None, "energy": {}, **fields}


def test_a_report_entry_writes_back_key_for_key():
    """Unknown keys, their order, nulls, ints written as ints and values of the wrong type all survive typing."""
    entry = _entry(
        latency_ms={"1": {"p90": 2, "p50": 1.5, "p99": 3.0, "repeats": 5}, "8": {"p50": 4.0, "p90": 5.0, "mean": 4.25}},
        llm={"setup": {"window": 32, "split": "val", "stride": None, "future": [1, 2]},
             "prefill_ms": {"p50": 7.0, "p90": 8.0}, "samples": {"Hi": "there"},
             "llamacpp": {"file": "m.gguf", "threads": {"1": {"prefill_tokens_per_s": 9.5, "decode_tokens_per_s": 3}},
                          "perplexity": "n/a"},
             "compile_s": {"1": 12.0}, "note": "kept"})
    m = Measurement.from_json(json.loads(json.dumps(entry)))
    assert json.dumps(m.to_json()) == json.dumps(entry)
    assert m.latency_ms["1"].p50 == 1.5 and m.latency_ms["1"].p10 is None and m.latency_ms["1"].extra == {"p99": 3.0}
    assert m.llm is not None and m.llm.setup.window == 32 and m.llm.setup.split == "val" and m.llm.extra == {"note": "kept"}
    assert m.llm.prefill_ms is not None and m.llm.prefill_ms.p90 == 8.0 and m.llm.compile_s == {"1": 12.0}
    cpp = m.llm.llamacpp
    assert cpp is not None and cpp.perplexity is None and cpp.extra == {"perplexity": "n/a"}
    assert cpp.threads is not None and cpp.threads["1"].decode_tokens_per_s == 3


def test_a_model_that_is_not_a_causal_lm_has_no_llm_facts():
    m = Measurement.from_json(_entry(llm={}))
    assert m.llm is None and m.to_json()["llm"] == {}
    assert Measurement.from_json({k: v for k, v in _entry().items() if k != "llm"}).to_json()["llm"] == {}


def test_fresh_llm_facts_write_report_json_order():
    facts = LLMFacts(prefill_ms=LatencyStats(p50=1.0, p90=2.0, p10=0.5), samples={"a": "b"},
                     setup=LLMSetup(scored_tokens=10, window=8, stride=4, split="test", prefill_tokens=16, decode_new_tokens=3,
                                    decode_prompt_tokens=8, kl_tokens=10, decode="eager"),
                     llamacpp=LlamaCppFacts(skipped="install it"))
    out = facts.to_json()
    assert list(out) == ["prefill_ms", "samples", "setup", "llamacpp"]  # no compiled-decode figures: eager decoding
    assert list(out["prefill_ms"]) == ["p50", "p10", "p90"] and out["llamacpp"] == {"skipped": "install it"}
    assert list(out["setup"]) == ["scored_tokens", "window", "stride", "split", "prefill_tokens", "decode_new_tokens",
                                  "decode_prompt_tokens", "kl_tokens", "decode"]
    assert LLMFacts.from_json(json.loads(json.dumps(out))) == facts


def test_a_timing_without_p50_or_p90_is_refused():
    with pytest.raises(ArtifactError, match=r"model 'lm' latency_ms\['1'\] must be an object with numbers p50 and p90"):
        Measurement.from_json(_entry(latency_ms={"1": {"p50": 1.0}}))

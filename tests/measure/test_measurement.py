"""Measurement JSON round-trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slimtorch.errors import ArtifactError
from slimtorch.measure import Measurement

finite = st.floats(0, 1e6, allow_nan=False)
latency = st.fixed_dictionaries({"p50": finite, "p90": finite, "mean": finite, "std": finite, "repeats": st.integers(1, 99)})


@given(
    name=st.text(min_size=1, max_size=12), params=st.integers(0, 10**9), size=st.none() | st.integers(0, 10**10),
    macs=st.none() | st.integers(0, 10**12), lat=st.dictionaries(st.sampled_from(["1", "8", "64"]), latency, max_size=3),
    acc=st.floats(0, 1), agreement=st.none() | st.floats(0, 1),
)
def test_json_round_trip(name, params, size, macs, lat, acc, agreement):
    m = Measurement(name=name, stage="s", params=params, nonzero_params=params // 2, size_bytes=size,
                    compressed_bytes=None, macs=macs, runtime="torch", threads=1, latency_ms=lat,
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

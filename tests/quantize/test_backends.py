"""Every runtime and mode the config accepts has a quantize backend registered under its key."""

from __future__ import annotations

import pytest

from slimtorch.quantize.backends import BACKENDS, backend_key
from slimtorch.quantize.config import RUNTIME_MODES, QuantizeConfig

CONFIGS = [{"runtime": runtime, "mode": mode} for runtime, modes in RUNTIME_MODES.items() for mode in modes] + [
    {"runtime": "onnxruntime", "mode": "static_int8", "qat": {}},
    {"runtime": "openvino", "mode": "static_int8", "qat": {}},
    {"runtime": "onnxruntime", "mode": "dynamic_int8", "qat": {}},
]


@pytest.mark.parametrize("fields", CONFIGS, ids=lambda f: f"{f['runtime']}-{f['mode']}" + ("-qat" if "qat" in f else ""))
def test_each_valid_config_has_a_backend(fields):
    assert callable(BACKENDS.get(backend_key(QuantizeConfig(**fields))))


def test_the_registry_holds_no_backend_a_config_cannot_reach():
    assert sorted(BACKENDS.names()) == sorted(backend_key(QuantizeConfig(**f)) for f in CONFIGS)

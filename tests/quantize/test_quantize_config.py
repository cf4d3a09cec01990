"""QuantizeConfig: bad settings fail early with messages that list the valid choices."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from slimtorch.quantize import QuantizeConfig
from slimtorch.quantize.config import RUNTIME_MODES


def test_unknown_mode_lists_the_valid_modes():
    with pytest.raises(ValidationError, match="dynamic_int8.*static_int8.*int4_weight_only"):
        QuantizeConfig(mode="int3")


@pytest.mark.parametrize(("mode", "runtime"), [("fp16", "torch"), ("int4_weight_only", "onnxruntime"), ("bf16", "onnxruntime"),
                                               ("static_int8", "torch")])
def test_mode_not_available_on_runtime_names_the_valid_ones(mode, runtime):
    with pytest.raises(ValidationError, match=rf"not available for runtime '{runtime}'; valid modes for {runtime}: "):
        QuantizeConfig(mode=mode, runtime=runtime)


def test_unknown_runtime_and_unknown_key_are_rejected():
    with pytest.raises(ValidationError, match="'torch', 'onnxruntime' or 'openvino'"):
        QuantizeConfig(runtime="tensorrt")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        QuantizeConfig(bits=4)


def test_int4_group_size_and_embedding_bits_are_checked():
    with pytest.raises(ValidationError, match="group_size must be one of 32, 64, 128, 256"):
        QuantizeConfig(mode="int4_weight_only", runtime="torch", group_size=48)
    with pytest.raises(ValidationError, match="embedding_bits: 4 applies to mode: dynamic_int8 with runtime: onnxruntime"):
        QuantizeConfig(mode="static_int8", embedding_bits=4)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        QuantizeConfig(mode="static_int8", calibration_batches=0)


@given(runtime=st.sampled_from(sorted(RUNTIME_MODES)), data=st.data())
def test_every_valid_pair_round_trips_through_model_dump(runtime, data):
    mode = data.draw(st.sampled_from(sorted(RUNTIME_MODES[runtime])))
    cfg = QuantizeConfig(mode=mode, runtime=runtime)
    assert QuantizeConfig(**cfg.model_dump()) == cfg
    assert cfg.backend()

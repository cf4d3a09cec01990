"""DistillConfig validation: every bad setting gives a message that says what to do."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from slimtorch.core import STAGES
from slimtorch.distill import DistillConfig, DistillStage


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_temperature_must_be_positive(t: float) -> None:
    with pytest.raises(ValidationError, match=r"distill.temperature must be > 0; got .*T = 1 is the plain softmax"):
        DistillConfig(temperature=t)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_must_be_in_unit_interval(alpha: float) -> None:
    with pytest.raises(ValidationError, match=r"distill.alpha must be in \[0, 1\]; got .*weight of the hard-label loss"):
        DistillConfig(alpha=alpha)


def test_teacher_weights_must_be_non_negative() -> None:
    with pytest.raises(ValidationError, match="teacher_weights must be non-negative with a positive sum"):
        DistillConfig(teacher_weights=[1.0, -1.0])


def test_unknown_key_rejected() -> None:
    with pytest.raises(ValidationError, match="temprature"):
        DistillConfig(temprature=2.0)  # type: ignore[call-arg]


def test_unknown_loss_rejected() -> None:
    with pytest.raises(ValidationError, match="'kd', 'mse' or 'cosine'"):
        DistillConfig(loss="kl")  # type: ignore[arg-type]


def test_registered_and_round_trips_through_yaml() -> None:
    assert STAGES.get("distill") is DistillStage
    cfg = DistillConfig(temperature=4.0, alpha=0.2, epochs=3, teacher_weights=[2, 1],
                        assistant={"model": "mlp", "args": {"hidden": [64]}},
                        features=[{"student": "net.1", "teacher": "net.3", "weight": 0.5}], ddp={"world_size": 2})
    again = DistillConfig.model_validate(yaml.safe_load(yaml.safe_dump(cfg.model_dump())))
    assert again == cfg
    assert cfg.train_config().epochs == 3 and cfg.train_config(epochs=7).epochs == 7


def test_default_rate_is_a_range_test_for_kd_and_1e3_for_encoder_losses() -> None:
    assert DistillConfig().train_config().lr == "auto"
    assert DistillConfig(loss="cosine").train_config().lr == 1e-3
    assert DistillConfig(lr=5e-3).train_config().lr == 5e-3
    cfg = DistillConfig(epochs=300, schedule="plateau", patience=5).train_config(epochs=7)
    assert (cfg.epochs, cfg.schedule, cfg.patience) == (7, "plateau", 5)

"""The contract every registered stage keeps, checked over the whole registry (in the spirit of timm's
registry-wide model tests and peft's method matrix).

A stage returns an ``nn.Module`` and a record named after it; outputs keep their shape and stay finite;
the result saves as an artifact that reloads to the same outputs. A new stage registered without an
entry in ``SMALL_CONFIGS`` fails here, so it cannot skip the contract.
"""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from slimtorch import artifact
from slimtorch.core import STAGES, Stage, StageRecord, forward

# The smallest useful config of each stage (one epoch, tiny ranks) so the matrix runs in seconds.
SMALL_CONFIGS = {
    "distill": {"epochs": 1, "temperature": 2.0, "alpha": 0.5},
    "export": {},
    "finetune": {"epochs": 1},
    "lora": {"epochs": 1, "rank": 2},
    "prune": {"sparsity": 0.5},
    "quantize": {"mode": "dynamic_int8", "runtime": "onnxruntime"},
}


def test_every_registered_stage_has_a_contract_entry():
    assert set(SMALL_CONFIGS) == set(STAGES), "add the new stage to SMALL_CONFIGS"


@pytest.mark.parametrize("kind", sorted(SMALL_CONFIGS))
def test_stage_contract(kind, mlp, ctx, tmp_path):
    teacher = copy.deepcopy(mlp).eval()
    ctx.teacher, ctx.teachers = teacher, [teacher]
    x = ctx.data.example_batch(8)
    before = forward(mlp.eval(), x).detach()
    stage = STAGES.get(kind)(STAGES.get(kind).config_cls(**SMALL_CONFIGS[kind]))

    model, record = stage.apply(mlp, ctx)

    assert isinstance(model, nn.Module)
    assert isinstance(record, StageRecord) and record.name == kind
    assert record.status in {"done", "nothing pruned"} and isinstance(record.notes, list)
    with torch.no_grad():
        after = forward(model.eval(), x)
    assert after.shape == before.shape, f"{kind} changed the output shape"
    assert torch.isfinite(after).all(), f"{kind} produced non-finite outputs"
    artifact.save(model, tmp_path / "m", task="classification", num_classes=10)
    reloaded = artifact.load(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(forward(reloaded, x), after, atol=1e-4, rtol=1e-4)


# -- the generic stage base ------------------------------------------------------------------------
class _TinyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = 2.0


@pytest.fixture()
def tiny_stage():
    class TinyScaleStage(Stage[_TinyConfig], kind="tiny_scale"):
        def apply(self, model, ctx):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(self.config.scale)
            return model, self.record(details={"scaled": True})

    yield TinyScaleStage
    STAGES._items.pop("tiny_scale")  # keep the registry to the built-in stages for the other tests


def test_a_stage_registers_once_from_its_config_type(tiny_stage, mlp, ctx):
    assert STAGES.get("tiny_scale") is tiny_stage
    assert tiny_stage.name == "tiny_scale" and tiny_stage.config_cls is _TinyConfig
    first = next(mlp.parameters()).detach().clone()
    model, record = tiny_stage(_TinyConfig(scale=0.5)).apply(mlp, ctx)
    torch.testing.assert_close(next(model.parameters()), first * 0.5)
    assert record.name == "tiny_scale" and record.config == {"scale": 0.5} and record.details == {"scaled": True}


def test_each_built_in_stage_is_registered_under_its_own_name_with_its_config():
    for kind in STAGES:
        cls = STAGES.get(kind)
        assert issubclass(cls, Stage) and cls.name == kind and issubclass(cls.config_cls, BaseModel)


def test_a_kind_registered_twice_is_refused(tiny_stage):
    with pytest.raises(ValueError, match="stage 'tiny_scale' is already registered"):
        class Again(Stage[_TinyConfig], kind="tiny_scale"):
            pass


def test_a_stage_without_a_config_type_is_refused():
    with pytest.raises(TypeError, match=r"must subclass Stage\[<its pydantic config class>\]"):
        class Untyped(Stage, kind="untyped"):  # type: ignore[type-arg]
            pass
    assert "untyped" not in STAGES

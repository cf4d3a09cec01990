import copy

import pytest
import torch

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.prune.config import LayersConfig
from slimtorch.prune.importance import IMPORTANCE
from slimtorch.prune.structured import mask_plan_, prune_structured_
from slimtorch.prune.targets import select_layers


def _model(kind, digits):
    torch.manual_seed(0)
    args = {"mlp": {"hidden": [32, 24]}, "cnn": {"channels": [8, 16]}, "resnet": {"widths": [8, 16], "blocks": [1, 1]}}[kind]
    model = build_model(kind, args, input_shape=digits.input_shape, num_classes=10).eval()
    for m in model.modules():  # non-trivial BN statistics so masked-vs-removed is a real test
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("round_to", [None, 4])
def test_removed_equals_masked(kind, round_to, digits):
    model = _model(kind, digits)
    x = digits.example_batch(16)
    removed = copy.deepcopy(model)
    targets, _ = select_layers(removed, LayersConfig(), x)
    plan = prune_structured_(removed, x, IMPORTANCE.get("magnitude")().tp_importance(), targets, 0.5, round_to=round_to)
    assert sum(p.numel() for p in removed.parameters()) < sum(p.numel() for p in model.parameters())
    masked = mask_plan_(copy.deepcopy(model), plan.groups)
    torch.testing.assert_close(removed(x), masked(x), atol=1e-5, rtol=1e-5)
    if round_to:
        assert all(after % round_to == 0 for _, after in plan.channels.values())


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet"])
def test_pruned_model_saves_and_loads(kind, digits, tmp_path):
    model = _model(kind, digits)
    ctx = RunContext(data=digits, work_dir=tmp_path / "w")
    out, record = PruneStage(PruneConfig(sparsity=0.5, granularity="filter")).apply(model, ctx)
    assert record.details["macs_after"] < record.details["macs_before"]
    assert out.slimtorch_spec["ref"] == kind
    artifact.save(out, tmp_path / "m")
    loaded = artifact.load(tmp_path / "m")
    x = digits.example_batch(8)
    torch.testing.assert_close(loaded(x), out.eval()(x))


@pytest.mark.parametrize("criterion", sorted(IMPORTANCE.names()))
def test_every_criterion_prunes_structure(criterion, mlp, digits, tmp_path):
    ctx = RunContext(data=digits, work_dir=tmp_path / "w")
    out, record = PruneStage(PruneConfig(sparsity=0.5, granularity="neuron", criterion=criterion)).apply(mlp, ctx)
    assert record.details["channels"]["net.1"] == [64, 32]
    assert not torch.isnan(out(digits.example_batch(4))).any()

"""A trained digits teacher and a magnitude-pruned copy of it for the LoRA tests."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F


@pytest.fixture(scope="session")
def teacher(digits, tmp_path_factory):
    from slimtorch.core import RunContext
    from slimtorch.models import build_model
    from slimtorch.train.loop import TrainConfig, fit

    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [128, 64]}, input_shape=digits.input_shape, num_classes=10)
    ctx = RunContext(data=digits, work_dir=tmp_path_factory.mktemp("teacher"))
    fit(model, lambda m, x, y: F.cross_entropy(m(x), y), digits.loader("train", shuffle=True), TrainConfig(epochs=12, lr=3e-3), ctx)
    return model


@pytest.fixture(scope="session")
def pruned_teacher(teacher, digits, tmp_path_factory):
    from slimtorch.core import RunContext
    from slimtorch.prune import PruneConfig, PruneStage

    ctx = RunContext(data=digits, work_dir=tmp_path_factory.mktemp("prune"))
    pruned, _ = PruneStage(PruneConfig(sparsity=0.9, granularity="weight", criterion="magnitude")).apply(copy.deepcopy(teacher), ctx)
    return pruned


@pytest.fixture()
def pruned(pruned_teacher):
    return copy.deepcopy(pruned_teacher)

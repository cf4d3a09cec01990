"""Small trained models shared by the prune tests (trained once per session)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F


@pytest.fixture(scope="session")
def trained_mlp(digits, tmp_path_factory):
    from slimtorch.core import RunContext
    from slimtorch.models import build_model
    from slimtorch.train.loop import TrainConfig, fit

    torch.manual_seed(0)  # the same weights whichever test asks first (the global generator's state depends on test order)
    model = build_model("mlp", {"hidden": [64, 32]}, input_shape=digits.input_shape, num_classes=10)
    ctx = RunContext(data=digits, work_dir=tmp_path_factory.mktemp("mlp"))
    fit(model, lambda m, x, y: F.cross_entropy(m(x), y), digits.loader("train", shuffle=True), TrainConfig(epochs=8, lr=3e-3), ctx)
    return model


@pytest.fixture()
def mlp(trained_mlp):
    return copy.deepcopy(trained_mlp)


@pytest.fixture()
def resnet(digits):
    from slimtorch.models import build_model

    torch.manual_seed(0)
    return build_model("resnet", {"widths": [8, 16], "blocks": [1, 1]}, input_shape=digits.input_shape, num_classes=10)

"""Small trained digits teachers shared by the distillation tests."""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn import functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from slimtorch.core import RunContext, forward
from slimtorch.data import DataBundle, build_data
from slimtorch.measure.accuracy import accuracy_of, predict
from slimtorch.models import build_model
from slimtorch.train import TrainConfig, fit


def train_classifier(model: torch.nn.Module, data: DataBundle, epochs: int, tmp: str, seed: int = 0) -> torch.nn.Module:
    ctx = RunContext(data=data, seed=seed, work_dir=tmp)  # type: ignore[arg-type]
    fit(model, lambda m, x, y: F.cross_entropy(forward(m, x), y), data.loader("train", shuffle=True, seed=seed),
        TrainConfig(epochs=epochs, lr=2e-3), ctx, evaluate=lambda m: accuracy_of(*predict(m, data.loader("val"))))
    return model.eval()


def test_accuracy(model: torch.nn.Module, data: DataBundle) -> float:
    return accuracy_of(*predict(model, data.loader("test")))


test_accuracy.__test__ = False  # a helper, not a test


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits() -> DataBundle:
    return build_data("digits", seed=0)


@pytest.fixture(scope="session")
def digits_teacher(digits: DataBundle, tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    torch.manual_seed(0)
    teacher = build_model("mlp", {"hidden": [256]}, input_shape=digits.input_shape, num_classes=10)
    return train_classifier(teacher, digits, 12, tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="session")
def digits_cnn_teacher(digits: DataBundle, tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    torch.manual_seed(0)
    teacher = build_model("cnn", {"channels": [8, 16]}, input_shape=digits.input_shape, num_classes=10)
    return train_classifier(teacher, digits, 6, tmp_path_factory.mktemp("cnn_teacher"))

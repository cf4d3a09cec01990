"""Shared fixtures: offline hub, few threads, small real data and models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import copy

import pytest
import torch
from torch.nn import functional as F

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `vision` tests cleanly when torchvision is absent (it is an optional extra)."""
    try:
        import torchvision  # noqa: F401

        has_vision = True
    except Exception:  # noqa: BLE001 - torchvision raises RuntimeError when built for another torch
        has_vision = False
    for item in items:
        if "vision" in item.keywords and not has_vision:
            item.add_marker(pytest.mark.skip(reason="torchvision not installed: pip install 'slimtorch[vision]' (make test-vision)"))


@pytest.fixture(scope="session")
def digits():
    from slimtorch.data import build_data

    return build_data("digits", seed=0, batch_size=64)


@pytest.fixture()
def ctx(digits, tmp_path):
    from slimtorch.core import RunContext

    return RunContext(data=digits, seed=0, work_dir=tmp_path / "work")


# A trained digits MLP (64-128-64-10) and a tiny random BERT, shared by the export, quantize and LoRA
# tests so the MLP is trained once per session (tests/prune overrides `trained_mlp` with its own).
TINY_BERT = {"kind": "encoder", "config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
                                          "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 120}}


@pytest.fixture(scope="session")
def trained_mlp(digits, tmp_path_factory):
    from slimtorch.core import RunContext
    from slimtorch.models import build_model
    from slimtorch.train.loop import TrainConfig, fit

    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [128, 64]}, input_shape=digits.input_shape, num_classes=10)
    ctx = RunContext(data=digits, work_dir=tmp_path_factory.mktemp("mlp"))
    fit(model, lambda m, x, y: F.cross_entropy(m(x), y), digits.loader("train", shuffle=True), TrainConfig(epochs=12, lr=3e-3), ctx)
    return model


@pytest.fixture()
def mlp(trained_mlp):
    return copy.deepcopy(trained_mlp)


@pytest.fixture()
def tiny_bert():
    from slimtorch.models import build_model

    torch.manual_seed(0)
    return build_model("hf:tiny-bert", TINY_BERT)


def _token_batch(batch: int = 3, length: int = 7, vocab: int = 120, pad_from: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad_from is not None:
        mask[1:, pad_from:] = 0
        ids[1:, pad_from:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture()
def token_batch():
    """``token_batch(batch, length, pad_from=None)`` -> {input_ids, attention_mask} for the tiny BERT."""
    return _token_batch

"""Shared fixtures: offline hub, few threads, small real data and models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `vision` tests cleanly when torchvision is absent (it is an optional extra)."""
    try:
        import torchvision  # noqa: F401

        has_vision = True
    except Exception:  # torchvision raises RuntimeError when built for another torch
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

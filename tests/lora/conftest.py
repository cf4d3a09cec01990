"""A magnitude-pruned copy of the shared trained digits MLP for the LoRA tests."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="session")
def teacher(trained_mlp):
    """The shared trained digits MLP (tests/conftest.py), as the teacher to recover towards."""
    return trained_mlp


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

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from slimtorch.prune.masks import bake_masks_, compute_masks, mask_of, set_mask_, to_groups


def _layers(conv: bool):
    torch.manual_seed(0)
    if conv:
        return {"a": nn.Conv2d(8, 6, 3), "b": nn.Conv2d(4, 5, 3)}
    return {"a": nn.Linear(16, 12), "b": nn.Linear(8, 7)}


@settings(max_examples=30, deadline=None)
@given(s=st.floats(0, 0.99), gran=st.sampled_from(["weight", "vector", "kernel"]), conv=st.booleans(), scope=st.sampled_from(["layer", "global"]))
def test_exact_sparsity(s, gran, conv, scope):
    if gran == "kernel" and not conv:
        return
    mods = _layers(conv)
    scores = {f: torch.rand(m.weight.shape) for f, m in mods.items()}
    masks = compute_masks(scores, mods, gran, s, scope, vector_size=4)
    group_sizes = {f: to_groups(m, m.weight, gran, 4).shape for f, m in mods.items()}
    if scope == "layer":
        for f, (g, _) in group_sizes.items():
            removed = (masks[f] == 0).float().mean().item()
            assert removed == pytest.approx(round(s * g) / g, abs=1e-6)
    else:
        total = sum(m.numel() for m in masks.values())
        removed = sum((m == 0).sum().item() for m in masks.values())
        max_group = max(size for _, size in group_sizes.values())
        assert abs(removed - s * total) <= max_group
    for f, m in masks.items():  # whole groups only
        g = to_groups(mods[f], m, gran, 4)
        assert ((g.sum(1) == 0) | (g.sum(1) == g.shape[1])).all()


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 7), extra=st.integers(1, 4), conv=st.booleans())
def test_nm_pattern(n, extra, conv):
    m = n + extra
    layer = nn.Conv2d(2 * m, 3, 3) if conv else nn.Linear(3 * m, 5)
    mask = compute_masks({"x": torch.rand(layer.weight.shape)}, {"x": layer}, f"{n}:{m}", 0.0)["x"]
    runs = (mask.movedim(1, -1) if conv else mask).reshape(-1, m)
    assert (runs.sum(1) == n).all()
    assert (mask == 0).float().mean().item() == pytest.approx(1 - n / m)


def test_masks_survive_training_and_bake():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    mask = (torch.rand(4, 8) > 0.5).float()
    set_mask_(layer, mask)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(5):
        opt.zero_grad()
        layer(torch.randn(16, 8)).pow(2).sum().backward()
        opt.step()
    assert (layer.weight[mask == 0] == 0).all()
    assert (layer.parametrizations.weight.original[mask == 0] == 0).all()  # the raw weights stay zero too
    clone = copy.deepcopy(layer)
    assert mask_of(clone) is not None
    bake_masks_(layer)
    assert mask_of(layer) is None and isinstance(layer.weight, nn.Parameter)
    assert (layer.weight[mask == 0] == 0).all()

"""The peft adapter: target resolution, trainable counts, merge gives a plain model with the same outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimtorch.errors import UnsupportedModuleError
from slimtorch.lora import _peft
from slimtorch.models import build_model
from tests.conftest import TINY_BERT


def test_default_targets_are_every_linear_for_builtins(digits):
    model = build_model("mlp", {"hidden": [32, 16]}, input_shape=digits.input_shape, num_classes=10)
    assert _peft.resolve_targets(model, None) == ["net.1", "net.3", "net.5"]
    assert _peft.resolve_targets(model, ["net.3"]) == ["net.3"]


def test_default_targets_for_hf_encoder_are_query_and_value():
    torch.manual_seed(0)
    model = build_model("hf:tiny", TINY_BERT)
    targets = _peft.resolve_targets(model, None)
    assert len(targets) == 4 and all(t.endswith(("query", "value")) for t in targets)


def test_unknown_target_lists_the_adaptable_layers(digits):
    model = build_model("mlp", {"hidden": [8]}, input_shape=digits.input_shape, num_classes=10)
    with pytest.raises(UnsupportedModuleError, match=r"matched no Linear.*Layers LoRA can adapt: net.1, net.3"):
        _peft.resolve_targets(model, ["attention"])


@pytest.mark.parametrize("kind", ["mlp", "cnn", "bert"])
def test_merge_gives_plain_model_with_identical_outputs(digits, kind):
    torch.manual_seed(0)
    if kind == "bert":
        model = build_model("hf:tiny", TINY_BERT)
        x = {"input_ids": torch.randint(1, 120, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    else:
        model = build_model(kind, {}, input_shape=digits.input_shape, num_classes=10)
        x = digits.example_batch(8)
    plain_types = {type(m) for m in model.modules()}
    adapted = _peft.attach_lora_(copy.deepcopy(model), _peft.resolve_targets(model, None), rank=4, lora_alpha=8, dropout=0.0)
    with torch.no_grad():  # make the adapters non-zero so merging has something to merge
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    adapted.eval()
    call = (lambda m: m(**x)) if isinstance(x, dict) else (lambda m: m(x))
    with torch.no_grad():
        expected = call(adapted)
        assert (expected - call(model.eval())).abs().max() > 1e-3
        merged = _peft.merge_lora_(adapted)
        torch.testing.assert_close(call(merged), expected, atol=1e-5, rtol=0)
    assert {type(m) for m in merged.modules()} == plain_types  # no peft layer left
    assert all(p.requires_grad for p in merged.parameters())
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_trainable_params_are_only_the_adapters(digits):
    model = build_model("mlp", {"hidden": [32]}, input_shape=digits.input_shape, num_classes=10)
    adapted = _peft.attach_lora_(model, ["net.1"], rank=2, lora_alpha=4, dropout=0.0)
    assert _peft.trainable_params(adapted) == 2 * (64 + 32)
    assert isinstance(adapted.base_model.model.net[2], nn.ReLU)


def test_masked_update_keeps_the_zeros_and_merges_exactly(digits):
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [32]}, input_shape=digits.input_shape, num_classes=10).eval()
    mask = (torch.rand_like(model.net[1].weight) > 0.7).float()
    with torch.no_grad():
        model.net[1].weight.mul_(mask)
    adapted = _peft.attach_lora_(model, ["net.1"], rank=4, lora_alpha=8, dropout=0.0, masks={"net.1": mask})
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    x = digits.example_batch(8)
    with torch.no_grad():
        expected = adapted(x)
        merged = _peft.merge_lora_(adapted)
        torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=0)
    assert torch.equal(merged.net[1].weight == 0, mask == 0)
    assert not hasattr(merged.net[1], _peft.MASK_ATTR)

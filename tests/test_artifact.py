import json

import pytest
import torch
from torch.nn.utils import parametrize

from slimtorch import artifact
from slimtorch.errors import ArtifactError
from slimtorch.models import build_model


def _same(a, b, x):
    a.eval(), b.eval()
    return torch.allclose(a(x), b(x), atol=1e-6)


def test_roundtrip_builtin(tmp_path):
    model = build_model("cnn", {"channels": [8, 16]}, input_shape=(1, 8, 8), num_classes=10).eval()
    artifact.save(model, tmp_path / "m", task="classification")
    again = artifact.load(tmp_path / "m")
    assert _same(model, again, torch.randn(5, 1, 8, 8))
    assert json.loads((tmp_path / "m" / "slimtorch.json").read_text())["task"] == "classification"


def test_structurally_smaller_model_reloads(tmp_path):
    """Widths come from the saved tensors, so a model whose layers shrank reloads without its recipe."""
    model = build_model("mlp", {"hidden": [32, 16]}, input_shape=(64,), num_classes=10)
    first = model.net[1]
    keep = torch.arange(0, 32, 2)
    small = torch.nn.Linear(64, 16)
    small.weight.data, small.bias.data = first.weight.data[keep], first.bias.data[keep]
    model.net[1] = small
    nxt = model.net[3]
    nxt_small = torch.nn.Linear(16, 16)
    nxt_small.weight.data, nxt_small.bias.data = nxt.weight.data[:, keep], nxt.bias.data
    model.net[3] = nxt_small
    artifact.save(model, tmp_path / "m")
    again = artifact.load(tmp_path / "m")
    assert again.net[1].out_features == 16 and again.net[3].in_features == 16
    assert _same(model, again, torch.randn(3, 64))


class _Mask(torch.nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def test_masks_are_baked_and_recorded(tmp_path):
    model = build_model("mlp", {"hidden": [8]}, input_shape=(4,), num_classes=2)
    mask = (torch.rand(8, 4) > 0.5).float()
    parametrize.register_parametrization(model.net[1], "weight", _Mask(mask))
    artifact.save(model, tmp_path / "m")
    spec = artifact.read_spec(tmp_path / "m")
    assert spec["masked_modules"] == ["net.1"]
    again = artifact.load(tmp_path / "m")
    assert torch.equal(again.net[1].weight == 0, mask == 0) or (again.net[1].weight[mask == 0] == 0).all()
    assert _same(model, again, torch.randn(3, 4))


def test_corrupted_weights_and_spec_and_version(tmp_path):
    model = build_model("mlp", {"hidden": [8]}, input_shape=(4,), num_classes=2)
    artifact.save(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(ArtifactError, match="missing or corrupted"):
        artifact.load(tmp_path / "m")
    spec = tmp_path / "m" / "slimtorch.json"
    data = json.loads(spec.read_text())
    spec.write_text(json.dumps({**data, "artifact_version": 99, "slimtorch_version": "9.0"}))
    with pytest.raises(ArtifactError, match="written by slimtorch 9.0 with artifact format 99"):
        artifact.load(tmp_path / "m")
    spec.write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupted"):
        artifact.load(tmp_path / "m")
    with pytest.raises(ArtifactError, match="not a slimtorch model directory"):
        artifact.load(tmp_path)


def test_model_without_reference_says_how_to_fix(tmp_path):
    artifact.save(torch.nn.Linear(2, 2), tmp_path / "m")
    with pytest.raises(ArtifactError, match="records no architecture"):
        artifact.load(tmp_path / "m")


def test_hf_roundtrip(tmp_path):
    cfg = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 50}
    model = build_model("hf:tiny", {"config": cfg})
    artifact.save(model, tmp_path / "m")
    again = artifact.load(tmp_path / "m")
    ids = torch.randint(0, 50, (2, 5))
    assert torch.allclose(model(ids), again(ids), atol=1e-6)

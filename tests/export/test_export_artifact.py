"""ONNX artifacts round-trip through slimtorch.artifact.save/load; bad files give ArtifactError."""

from __future__ import annotations

import copy

import onnxruntime as ort
import pytest
import torch

from slimtorch import artifact
from slimtorch.errors import ArtifactError
from slimtorch.export import to_ort
from slimtorch.models import build_model
from slimtorch.runtime import OrtModule


def test_onnx_round_trip_gives_the_same_outputs(digits, tmp_path):
    model = build_model("cnn", {"channels": [8, 16]}, input_shape=digits.input_shape, num_classes=10).eval()
    ort_model = to_ort(model, digits.example_batch(2))
    artifact.save(ort_model, tmp_path / "m")
    assert (tmp_path / "m" / "model.onnx").stat().st_size == ort_model.size_bytes
    loaded = artifact.load(tmp_path / "m")
    assert isinstance(loaded, OrtModule)
    x = digits.example_batch(16)
    torch.testing.assert_close(loaded(x), ort_model(x), atol=0, rtol=0)
    # the file opens in onnxruntime directly too
    session = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": x.numpy()})[0].shape == (16, 10)


def test_corrupted_onnx_file_is_an_artifact_error(digits, tmp_path):
    model = build_model("mlp", {"hidden": [8]}, input_shape=digits.input_shape, num_classes=10)
    artifact.save(to_ort(model, digits.example_batch(2)), tmp_path / "m")
    (tmp_path / "m" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ArtifactError, match="not a valid ONNX model"):
        artifact.load(tmp_path / "m")


def test_ort_module_survives_deepcopy(digits):
    model = build_model("mlp", {"hidden": [8]}, input_shape=digits.input_shape, num_classes=10)
    ort_model = to_ort(model, digits.example_batch(2))
    x = digits.example_batch(4)
    expected = ort_model(x)
    torch.testing.assert_close(copy.deepcopy(ort_model)(x), expected)
    assert ort_model.initializer_stats()["params"] == sum(p.numel() for p in model.parameters())

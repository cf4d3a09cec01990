"""QuantizeStage end to end on a trained digits MLP: accuracy kept, artifacts round-trip, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.errors import NotCalibratedError, UnsupportedModuleError
from slimtorch.measure.accuracy import task_metric
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.runtime import OrtModule

# (mode, runtime, allowed accuracy drop on the digits test split)
CASES = [
    ("dynamic_int8", "onnxruntime", 0.02),
    ("static_int8", "onnxruntime", 0.02),
    ("fp16", "onnxruntime", 0.005),
    ("dynamic_int8", "torch", 0.02),
    ("int8_weight_only", "torch", 0.02),
    ("int4_weight_only", "torch", 0.05),
    ("bf16", "torch", 0.01),
]


@pytest.mark.parametrize(("mode", "runtime", "tolerance"), CASES)
def test_accuracy_within_tolerance_and_artifact_round_trip(mlp, digits, ctx, tmp_path, mode, runtime, tolerance):
    before = task_metric(mlp, digits, "test")
    assert before > 0.9
    quantized, record = QuantizeStage(QuantizeConfig(mode=mode, runtime=runtime)).apply(mlp, ctx)
    after = task_metric(quantized, digits, "test")
    assert after >= before - tolerance, f"{mode}/{runtime}: {before:.4f} -> {after:.4f}"
    assert record.details["backend"] and record.details["argmax_agreement"] > 0.9
    assert getattr(quantized, "slimtorch_runtime", "torch") == runtime
    artifact.save(quantized, tmp_path / "q")
    loaded = artifact.load(tmp_path / "q")
    x = digits.example_batch(32)
    torch.testing.assert_close(loaded(x), quantized(x), atol=1e-6, rtol=0)


def test_int8_artifacts_are_about_four_times_smaller(mlp, digits, ctx, tmp_path):
    artifact.save(mlp, tmp_path / "fp32")
    fp32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    for mode, runtime, name in [("dynamic_int8", "onnxruntime", "model.onnx"), ("int8_weight_only", "torch", "model.safetensors")]:
        q, _ = QuantizeStage(QuantizeConfig(mode=mode, runtime=runtime)).apply(mlp, ctx)
        artifact.save(q, tmp_path / mode)
        assert (tmp_path / mode / name).stat().st_size < 0.35 * fp32


def test_input_model_is_not_modified(mlp, digits, ctx):
    x = digits.example_batch(8)
    expected = mlp(x)
    QuantizeStage(QuantizeConfig(mode="int4_weight_only", runtime="torch")).apply(mlp, ctx)
    torch.testing.assert_close(mlp(x), expected)
    assert all(type(m) is not nn.Linear or m.weight.dtype == torch.float32 for m in mlp.modules())


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_pruned_model_with_parametrized_masks(mlp, digits, ctx, runtime):
    first = mlp.net[1]
    parametrize.register_parametrization(first, "weight", _Mask((torch.rand_like(first.weight) > 0.5).float()))
    before = task_metric(mlp, digits, "test")
    quantized, _ = QuantizeStage(QuantizeConfig(mode="dynamic_int8", runtime=runtime)).apply(mlp, ctx)
    assert abs(task_metric(quantized, digits, "test") - before) < 0.03
    assert parametrize.is_parametrized(mlp.net[1])


def test_int4_on_a_model_without_linear_layers(digits, ctx):
    convnet = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(UnsupportedModuleError, match="int4_weight_only.*has no Linear layer"):
        QuantizeStage(QuantizeConfig(mode="int4_weight_only", runtime="torch")).apply(convnet, ctx)


def test_static_int8_with_empty_calibration_split(mlp, digits, tmp_path):
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    data = type(digits)(**{**digits.__dict__, "train": empty})
    with pytest.raises(NotCalibratedError, match="split is empty or missing.*calibration_split"):
        QuantizeStage(QuantizeConfig(mode="static_int8")).apply(mlp, RunContext(data=data, work_dir=tmp_path))
    with pytest.raises(NotCalibratedError, match="split is empty or missing"):
        QuantizeStage(QuantizeConfig(mode="static_int8", calibration_split="transfer")).apply(mlp, RunContext(data=digits, work_dir=tmp_path))


def test_static_int8_records_calibration(mlp, ctx):
    q, record = QuantizeStage(QuantizeConfig(mode="static_int8", calibration_batches=3)).apply(mlp, ctx)
    assert isinstance(q, OrtModule)
    assert record.details["calibration_batches"] == 3 and record.details["calibration_examples"] == 3 * 64
    assert "QDQ static int8" in record.details["backend"]


def test_conv_net_static_int8(digits, ctx):
    from slimtorch.models import build_model

    torch.manual_seed(0)
    cnn = build_model("cnn", {"channels": [8, 16]}, input_shape=digits.input_shape, num_classes=10).eval()
    _q, record = QuantizeStage(QuantizeConfig(mode="static_int8")).apply(cnn, ctx)
    assert record.details["output_cosine"] > 0.98


def test_hf_encoder_quantizes_on_both_runtimes(tiny_bert, token_batch, digits, tmp_path):
    data = type(digits)(**{**digits.__dict__, "test": _TokenSet(token_batch(6, 9, pad_from=5)), "task": "embedding",
                           "collate_fn": _collate})
    ctx = RunContext(data=data, work_dir=tmp_path)
    x = token_batch(4, 9, pad_from=5)
    ref = tiny_bert(**x)
    for runtime, mode in [("onnxruntime", "dynamic_int8"), ("torch", "dynamic_int8"), ("torch", "int8_weight_only")]:
        q, _record = QuantizeStage(QuantizeConfig(mode=mode, runtime=runtime)).apply(tiny_bert, ctx)
        assert torch.nn.functional.cosine_similarity(q(**x), ref).min() > 0.98, (runtime, mode)
        artifact.save(q, tmp_path / f"{runtime}-{mode}")
        torch.testing.assert_close(artifact.load(tmp_path / f"{runtime}-{mode}")(**x), q(**x), atol=1e-6, rtol=0)


class _TokenSet(torch.utils.data.Dataset):
    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["input_ids"])

    def __getitem__(self, i: int):
        return {k: v[i] for k, v in self.batch.items()}, 0


def _collate(items):
    xs = [x for x, _ in items]
    return {k: torch.stack([x[k] for x in xs]) for k in xs[0]}, torch.zeros(len(items), dtype=torch.long)

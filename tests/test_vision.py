"""torchvision models through slimtorch (vision extra; `make test-vision`). Skipped without torchvision."""

from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.vision
ROOT = Path(__file__).resolve().parents[1]


def test_torchvision_reference_builds_with_data_classes():
    from slimtorch.models import build_model

    model = build_model("torchvision:resnet18", {"weights": None}, num_classes=10).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert model.slimtorch_spec == {"ref": "torchvision:resnet18", "args": {"weights": None, "num_classes": 10}}


@pytest.mark.parametrize("name", ["torchvision_resnet18", "torchvision_googlenet"])
def test_torchvision_examples_prune_quantize_and_measure(name, tmp_path):
    from slimtorch.run.pipeline import compress

    raw = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
    raw["data"]["args"].update({"shape": [3, 64, 64], "num_samples": 20})  # small inputs keep the test short
    raw["evaluate"] = {"latency": {"batch_sizes": [1], "repeats": 3, "warmup": 1}}
    report = compress(raw, tmp_path / name).report
    teacher, pruned, quantized = report.models
    assert pruned.params < 0.4 * teacher.params  # half the channels → about a quarter of the weights
    assert pruned.macs is not None and teacher.macs is not None and pruned.macs < 0.4 * teacher.macs
    assert quantized.runtime == "onnxruntime" and (quantized.size_bytes or 0) < (pruned.size_bytes or 0)
    import slimtorch

    reloaded = slimtorch.load(tmp_path / name / "models" / "1_prune")
    assert reloaded(torch.randn(2, 3, 64, 64)).shape == (2, 1000)

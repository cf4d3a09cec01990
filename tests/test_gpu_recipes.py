"""Every engine on a GPU: shortened example recipes run end to end with `device: cuda` (skipped without CUDA).

Each recipe mixes a model on the GPU (teachers, training) with CPU loaders, CPU calibration and CPU
runtimes (ONNX export, onnxruntime, torch's packed kernels); these are the joints where a tensor on the
wrong device breaks a run. benchmarks/gpu_check.py compares the figures with the CPU run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import slimtorch
from slimtorch import artifact
from slimtorch.device import model_device

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["digits", "distill_features", "distill_multi_teacher", "lora_recovery", "prune_kernel", "prune_lottery",
           "prune_structured_cnn", "prune_weight", "quant_qat", "quant_static_int8", "quant_max_drop"]

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _short(text: str) -> str:
    text = re.sub(r"(?<![a-z_])epochs: *\d+", "epochs: 1", text)
    return re.sub(r"finetune_epochs: *\d+", "finetune_epochs: 1", text)


@pytest.mark.parametrize("name", RECIPES)
def test_example_recipe_runs_on_cuda_and_its_artifacts_load_on_the_cpu(name, tmp_path):
    report = slimtorch.compress(_short((ROOT / "examples" / f"{name}.yaml").read_text()), tmp_path / "out", device="cuda").report
    assert report.extra["training"]["device"].startswith("cuda")
    for m in report.models:
        assert m.device.startswith("cuda") if m.runtime == "torch" else m.device == "cpu"
        assert m.peak_memory_bytes is None or m.peak_memory_bytes > 0
        assert model_device(artifact.load(tmp_path / "out" / "models" / m.name)).type == "cpu"
    assert report.final_model.primary_metric[1] is not None

"""Where the report card measures: the run's device under `evaluate.device: auto`, the CPU for ONNX runtimes,
and GPU latency (CUDA events) and peak GPU memory when a GPU is there (those tests skip without one)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from slimtorch.device import model_device
from slimtorch.measure import EvaluateConfig, measure, outputs_on
from slimtorch.measure.config import LatencyConfig
from slimtorch.measure.latency import time_latency
from slimtorch.measure.placement import measuring_device, peak_memory, placed_on
from slimtorch.models import build_model

FAST = EvaluateConfig(latency=LatencyConfig(batch_sizes=[1, 32], warmup=2, repeats=5), noise_levels=[0.3])
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture()
def mlp(digits):
    torch.manual_seed(0)
    return build_model("mlp", {"hidden": [32]}, input_shape=digits.input_shape, num_classes=digits.num_classes)


def test_evaluate_device_is_checked_when_the_recipe_is_read():
    assert EvaluateConfig(device=" CUDA:1 ").device == "cuda:1"
    with pytest.raises(ValidationError, match="device must be auto, cpu, cuda, cuda:N or mps; got 'gpu'"):
        EvaluateConfig(device="gpu")


def test_auto_measures_where_the_run_trains_and_onnx_runtimes_on_the_cpu(mlp):
    assert measuring_device("auto", None, mlp) == torch.device("cpu")
    assert measuring_device("auto", torch.device("cuda", 0), mlp) == torch.device("cuda", 0)
    mlp.slimtorch_runtime = "onnxruntime"  # an ONNX wrapper runs on its own provider, whatever the run used
    assert measuring_device("auto", torch.device("cuda", 0), mlp) == torch.device("cpu")


def test_cpu_measurement_records_its_device_and_no_gpu_memory(digits, mlp):
    m = measure(mlp, name="m", stage="s", data=digits, config=FAST, device=torch.device("cpu"))
    assert m.device == "cpu" and m.peak_memory_bytes is None
    assert model_device(mlp) == torch.device("cpu")
    with peak_memory(torch.device("cpu")) as peak:
        mlp(torch.zeros(2, 64))
    assert peak.bytes is None


@CUDA
def test_gpu_measurement_matches_the_cpu_and_moves_the_model_back(digits, mlp):
    cpu = measure(mlp, name="m", stage="s", data=digits, config=FAST, baseline_outputs=outputs_on(mlp, digits, FAST))
    gpu = measure(mlp, name="m", stage="s", data=digits, config=FAST, baseline_outputs=outputs_on(mlp, digits, FAST),
                  device=torch.device("cuda", 0))
    assert gpu.device == "cuda:0" and cpu.device == "cpu"
    assert model_device(mlp) == torch.device("cpu")  # measured there, handed back where it was
    assert gpu.metrics["accuracy"] == pytest.approx(cpu.metrics["accuracy"], abs=2e-3)
    assert gpu.agreement is not None and gpu.agreement > 0.99
    # weights (2.4k params) and the batch-32 activations at least, well under a MB for this MLP
    assert 4 * cpu.params <= gpu.peak_memory_bytes < 10**6
    assert all(t.p50 > 0 for t in gpu.latency_ms.values())


@CUDA
def test_cuda_latency_times_the_kernels_not_the_launches():
    # A matmul chain long enough that the GPU work outlasts the Python launch: a host clock without
    # synchronisation would read the launch time only; CUDA events read the kernels.
    model = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(16)]).cuda()
    x = torch.randn(512, 4096, device="cuda")
    t = time_latency(model, x, warmup=3, repeats=5, threads=1)
    flops = 2 * 512 * 4096 * 4096 * 16
    assert t.p50 > flops / 1e15 * 1e3  # 1 PFLOP/s in fp32 is beyond any GPU; 16 launches take ~0.1 ms


@CUDA
def test_a_model_without_gpu_kernels_is_measured_on_the_cpu_with_a_note(digits):
    class CpuOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.is_cuda:
                raise NotImplementedError("no CUDA kernel for this layer")
            return self.linear(x)

    notes: list[str] = []
    model = CpuOnly()
    with placed_on(model, torch.device("cuda", 0), digits.example_batch(1), notes) as where:
        assert where == torch.device("cpu") and model_device(model) == torch.device("cpu")
    assert notes and "does not run on cuda:0" in notes[0] and "no CUDA kernel" in notes[0]

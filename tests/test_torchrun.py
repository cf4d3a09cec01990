"""`torchrun --nproc_per_node 2 slimtorch compress` on CPU (gloo): every training stage data-parallel,
rank 0 alone owns the output directory, and a killed job resumes under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

# Teacher training, distillation (lr: auto: rank 0's range test), structured pruning recovered by
# distillation, finetune and LoRA: every trainer.
RECIPE = """\
name: ddp
seed: 0
data: {source: digits, batch_size: 64}
teacher: {model: mlp, args: {hidden: [128]}, train: {epochs: EPOCHS}}
student: {model: mlp, args: {hidden: [64]}}
stages:
  - distill: {temperature: 2.0, alpha: 0.5, epochs: 2}
  - prune: {sparsity: 0.5, granularity: neuron, recover: distill, finetune_epochs: 2}
  - finetune: {epochs: 2}
  - lora: {epochs: 1, rank: 4, compare_full_finetune: false}
evaluate: {latency: {batch_sizes: [1], repeats: 3, warmup: 1}, noise_levels: []}
"""

pytestmark = [pytest.mark.slow, pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")]


def _torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), "-m", "slimtorch.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=timeout, check=False)


def _final_accuracy(out: Path) -> float:
    report = json.loads((out / "report.json").read_text())
    return next(m for m in report["models"] if m["name"] == report["final"])["metrics"]["accuracy"]


def test_two_processes_train_like_one_and_rank_0_alone_writes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("EPOCHS", "6"))
    single = subprocess.run([sys.executable, "-m", "slimtorch.cli", "compress", str(recipe), "--out", str(tmp_path / "one"), "--quiet"],
                            capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600, check=False)
    assert single.returncode == 0, single.stderr
    proc = _torchrun("compress", str(recipe), "--out", str(tmp_path / "two"), "--quiet")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("slimtorch report: ddp") == 1  # one rank prints the card
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["training"]["processes"] == 2
    assert [s["name"] for s in report["stages"]] == ["train_teacher", "distill", "prune", "finetune", "lora"]
    # each rank takes its share of the batches one process would take: the same training, up to rounding
    assert abs(_final_accuracy(tmp_path / "two") - _final_accuracy(tmp_path / "one")) <= 0.01
    assert not list((tmp_path / "two").rglob("rank1*"))


def test_a_killed_torchrun_job_resumes_under_torchrun(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("EPOCHS", "40"))
    out = tmp_path / "out"
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(29600 + os.getpid() % 1000), "-m", "slimtorch.cli",
           "compress", str(recipe), "--out", str(out), "--quiet"]
    job = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "work" / "teacher" / "last" / "meta.json").exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.1)
    # SIGKILL the agent and both ranks (torchrun starts its workers outside the agent's process group)
    subprocess.run(["pkill", "-9", "-f", str(out)], check=False)
    job.wait()
    while subprocess.run(["pgrep", "-f", str(out)], capture_output=True, check=False).returncode == 0:
        time.sleep(0.1)
    assert (out / "work" / "teacher" / "last" / "meta.json").exists()
    proc = _torchrun("--verbose", "compress", str(recipe), "--out", str(out), "--resume", "--quiet")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming train teacher at epoch" in proc.stderr
    assert (out / "report.json").exists() and _final_accuracy(out) > 0.8


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "slimtorch.cli", "compress", "examples/digits.yaml", "--device", "cuda", "--out",
                           "/nonexistent/never-created"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [("error: device 'cuda' was asked for but this machine has no CUDA GPU "
                                                f"(torch {torch.__version__} sees none); use device: cpu or auto.")]

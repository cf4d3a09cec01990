"""Crash safety: SIGKILL a real `slimtorch compress` at several points, --resume, get the same result.

The run trains a teacher (with dropout), distils a student, prunes it and fine-tunes it. Models come
from ``slow_models:mlp`` (the built-in MLP, a few ms slower per training step) so the test can poll
the run's state.json and epoch checkpoints and kill it inside a training loop, not race it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from slimtorch import artifact

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

RECIPE = """\
name: crash
seed: 3
data: {source: digits, batch_size: 64}
teacher: {model: "slow_models:mlp", args: {hidden: [64], dropout: 0.1}, train: {epochs: 4, lr: 0.01}}
student: {model: "slow_models:mlp", args: {hidden: [16]}}
stages:
  - distill: {temperature: 2.0, alpha: 0.5, epochs: 4, lr: 0.01}
  - prune: {sparsity: 0.5}
  - finetune: {epochs: 3, lr: 0.003}
evaluate: {latency: {batch_sizes: [1], repeats: 3, warmup: 0}, noise_levels: [0.1]}
"""


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _start(recipe: Path, out: Path, *flags: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "slimtorch.cli", "compress", str(recipe), "--out", str(out), "--quiet", *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())


def _steps(out: Path) -> dict:
    try:
        return json.loads((out / "state.json").read_text())["steps"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


def _kill_when(proc: subprocess.Popen, condition: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before the kill point '{what}': {proc.stderr.read()[-2000:]}")
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close(), proc.stderr.close()
            return
        time.sleep(0.003)
    proc.kill()
    pytest.fail(f"kill point '{what}' not reached in {timeout_s} s")


def _checkpoint(out: Path, *parts: str) -> Callable[[], bool]:
    return lambda: (out / "work" / Path(*parts) / "last" / "meta.json").exists()


def _finish(proc: subprocess.Popen) -> None:
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    recipe = tmp_path / "crash.yaml"
    recipe.write_text(RECIPE)
    straight_out, crashed = tmp_path / "straight", tmp_path / "crashed"
    straight = _start(recipe, straight_out)  # the uninterrupted reference, in parallel

    kills = [
        # (where, kill when, what must be true after the kill)
        ("teacher training", lambda: _checkpoint(crashed, "teacher")() and "teacher" not in _steps(crashed),
         lambda s: "teacher" not in s),
        ("distill stage", lambda: _checkpoint(crashed, "01_distill", "student")() and "1_distill" not in _steps(crashed),
         lambda s: "teacher" in s and "1_distill" not in s),
        ("between stages", lambda: "1_distill" in _steps(crashed), lambda s: "1_distill" in s and "3_finetune" not in s),
        ("finetune stage", lambda: _checkpoint(crashed, "03_finetune")() and "3_finetune" not in _steps(crashed),
         lambda s: "2_prune" in s and "3_finetune" not in s),
    ]
    proc = _start(recipe, crashed)
    for where, condition, check in kills:
        _kill_when(proc, condition, where)
        assert check(_steps(crashed)), f"killed later than '{where}': state has {list(_steps(crashed))}"
        proc = _start(recipe, crashed, "--resume")
    _finish(proc)
    _finish(straight)

    a = json.loads((straight_out / "report.json").read_text())
    b = json.loads((crashed / "report.json").read_text())
    assert [m["name"] for m in a["models"]] == [m["name"] for m in b["models"]] == ["teacher", "1_distill", "2_prune", "3_finetune"]
    assert [s["name"] for s in a["stages"]] == [s["name"] for s in b["stages"]]
    for ma, mb in zip(a["models"], b["models"]):
        assert mb["metrics"]["accuracy"] == pytest.approx(ma["metrics"]["accuracy"], abs=1e-6), ma["name"]
        assert mb["metrics"]["per_class_accuracy"] == pytest.approx(ma["metrics"]["per_class_accuracy"], abs=1e-6)
        assert mb["robustness"] == pytest.approx(ma["robustness"], abs=1e-6)
        assert (mb["agreement"] is None and ma["agreement"] is None) or mb["agreement"] == pytest.approx(ma["agreement"], abs=1e-6)
        assert (mb["params"], mb["nonzero_params"]) == (ma["params"], ma["nonzero_params"])

    # Nothing half-written survives, and every saved model loads with the same weights as the reference.
    leftovers = [p for p in crashed.rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert leftovers == []
    monkeypatch.syspath_prepend(str(HERE))
    for name in ("teacher", "1_distill", "2_prune", "3_finetune"):
        got, want = artifact.load(crashed / "models" / name, trust_code=True), artifact.load(straight_out / "models" / name, trust_code=True)
        for (k, va), vb in zip(want.state_dict().items(), got.state_dict().values()):
            torch.testing.assert_close(vb, va, atol=1e-6, rtol=0, msg=f"{name}.{k}")


def test_resume_cleanup_settles_what_a_killed_writer_left(tmp_path):
    """The states a SIGKILL can leave inside atomic writes, and what `--resume` makes of them."""
    from slimtorch.io import remove_stale_temporaries

    run = tmp_path / "run"
    # Names as tempfile.mkstemp/mkdtemp make them: `.<target>.<8 random characters>.tmp`.
    (run / "models" / ".teacher.k3j_x9a2.tmp").mkdir(parents=True)  # killed while writing a model directory
    (run / "models" / ".teacher.k3j_x9a2.tmp" / "model.safetensors").write_bytes(b"half")
    (run / ".state.json.x1b2c3d4.tmp").write_text('{"steps": ')  # killed while writing a file
    ck = run / "work" / "01_distill" / "student"
    (ck / ".last.old").mkdir(parents=True)  # killed between the two renames of a checkpoint swap
    (ck / ".last.old" / "meta.json").write_text("{}")
    (ck / "best").mkdir()
    (ck / ".best.old").mkdir()  # killed after the swap, before the old copy was removed
    user = run / "notes" / ".draft.abcdefgh.tmp"  # not a place slimtorch writes: left alone
    user.parent.mkdir()
    user.write_text("mine")
    (run / ".my.old").mkdir()  # no `my` to restore it to... but it is the user's, not a swap of ours
    removed = remove_stale_temporaries(run, subdirs=("models", "work"))
    assert sorted(p.name for p in removed) == [".state.json.x1b2c3d4.tmp", ".teacher.k3j_x9a2.tmp"]
    assert user.read_text() == "mine"
    assert (ck / "last" / "meta.json").exists() and not (ck / ".last.old").exists()
    assert (ck / "best").exists() and not (ck / ".best.old").exists()
    assert sorted(p for p in run.rglob("*") if p.name.endswith((".tmp", ".old"))) == [run / ".my.old", user]

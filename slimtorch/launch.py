"""``processes: N`` in a recipe: the run relaunches itself on N local processes, as ``torchrun`` would.

The workers are ``python -m torch.distributed.run --standalone --nproc_per_node N -m slimtorch.cli
compress …``: the same path a user's own ``torchrun`` command takes (rank 0 owns the output directory,
every training stage is DDP, the DDP exit trap is handled), so there is one distributed code path to
trust. The recipe travels as a YAML file in a private temporary directory; the caller reads the
report the workers wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from torch import nn

from slimtorch import artifact, errors
from slimtorch.errors import RecipeError, SlimtorchError, TrainingError
from slimtorch.models.weights import available_memory_bytes
from slimtorch.report.card import Report
from slimtorch.report.schema import load_report

ERROR_FILE_ENV = "SLIMTORCH_WORKER_ERROR_FILE"  # where a worker's refusal is written for the launching process


def record_worker_error(exc: SlimtorchError) -> None:
    """In a launched worker, write the refusal's class and message where the launcher will read it (rank 0 only)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if path and os.environ.get("RANK", "0") == "0":
        Path(path).write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)}))


# What one worker needs before its model and data: a Python process with torch and the DDP runtime loaded.
WORKER_BASE_BYTES = 400_000_000


def check_process_count(processes: int, device: str | None) -> None:
    """Refuse more workers than the machine can run side by side, before any is started.

    Raises:
        RecipeError: ``processes`` exceeds the GPUs (CUDA), the cores (CPU) or the free memory of this machine.
    """
    import torch

    on_cuda = device not in ("cpu", "mps") and torch.cuda.is_available() and (device or "auto").startswith(("auto", "cuda"))
    if on_cuda:
        have, what = torch.cuda.device_count(), "GPUs (DDP on CUDA runs one process per GPU)"
    else:
        have, what = os.cpu_count() or 1, "CPU cores (each process needs at least one)"
    if processes > have:
        raise RecipeError(f"processes: {processes} is more than this machine's {have} {what}. Set processes to at most {have}.")
    free = available_memory_bytes()
    if free is not None and processes * WORKER_BASE_BYTES > free:
        fits = max(1, free // WORKER_BASE_BYTES)
        raise RecipeError(f"processes: {processes} needs at least {processes * WORKER_BASE_BYTES / 1e9:.2g} GB "
                          f"({WORKER_BASE_BYTES / 1e9:.1g} GB per process before its model and data), but only {free / 1e9:.2g} GB is free. "
                          f"Set processes to at most {fits}.")


def run_local_processes(recipe_yaml: str, out: Path, processes: int, *, resume: bool, force: bool, device: str | None,
                        events: Callable[[str], None]) -> None:
    """Run the recipe on ``processes`` local workers and wait; the report is then in ``out``.

    Raises:
        SlimtorchError: the workers refused the input: the same class and one-line message as in one process.
        TrainingError: a worker crashed; the message has the workers' last lines.
        KeyboardInterrupt: the workers were interrupted (the run is resumable, as after Ctrl-C).
    """
    flags = ["--quiet", *(["--resume"] if resume else []), *(["--force"] if force else []), *(["--device", device] if device else [])]
    # Each worker gets its share of the cores: N processes each on every core would thrash.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))}
    with tempfile.TemporaryDirectory(prefix="slimtorch-launch-") as tmp:
        recipe_path = Path(tmp) / "recipe.yaml"
        recipe_path.write_text(recipe_yaml)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "slimtorch.cli", "compress", str(recipe_path), "--out", str(out), *flags]
        events(f"training on {processes} local processes (DDP: nccl on CUDA, gloo on CPU)")
        error_file = Path(tmp) / "error.json"
        with subprocess.Popen(cmd, env={**env, ERROR_FILE_ENV: str(error_file)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) as proc:
            try:
                _, stderr = proc.communicate()
            except KeyboardInterrupt:
                # torchrun passes SIGTERM on to its workers, which stop as after Ctrl-C: resumable, nothing half-written
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
                raise
        refusal = _read_refusal(error_file)
    if proc.returncode == 0:
        return
    if refusal is not None:
        raise refusal
    tail = "\n".join((stderr.strip().splitlines() or ["(no output)"])[-12:])
    raise TrainingError(f"the {processes} training processes failed (exit code {proc.returncode}); their last lines:\n{tail}")


def read_finished_run(out: Path, trusted_refs: frozenset[tuple[str, str]]) -> tuple[Report, nn.Module]:
    """The report the workers wrote to ``out`` and its final model, loaded from disk."""
    report = Report.from_json(load_report(out))
    return report, artifact.load(out / "models" / report.final, trusted_refs=trusted_refs)


def _read_refusal(path: Path) -> SlimtorchError | None:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    cls = getattr(errors, str(data.get("type")), None)
    cls = cls if isinstance(cls, type) and issubclass(cls, SlimtorchError) else SlimtorchError
    return cls(str(data.get("message")))

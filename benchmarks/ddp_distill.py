"""Wall time of a distill stage in one process against two (torchrun, gloo, CPU), side by side.

The same recipe (digits, 64-1200-1200-10 teacher given as trained weights, 128-unit student, Hinton KD
at a fixed epoch count with convergence stopping off) runs alternately as `slimtorch compress` and as
`torchrun --nproc_per_node 2 slimtorch compress`, ROUNDS times each. Reported: the distill stage's
seconds from each run's report, the medians, the 2-process speedup and both final accuracies. On a
2-core machine two ranks of one thread each is the most parallelism there is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from slimtorch.measure.machine import probe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """\
name: ddp-bench
seed: 0
data: {source: digits, batch_size: 64}
teacher: {model: mlp, args: {hidden: [1200, 1200]}, train: {epochs: 10, patience: null}}
student: {model: mlp, args: {hidden: [128]}}
stages:
  - distill: {temperature: 4.0, alpha: 0.3, epochs: EPOCHS, patience: null, cache_teacher: false}
evaluate: {latency: {batch_sizes: [1], repeats: 3, warmup: 1}, noise_levels: []}
"""


def run(recipe: Path, out: Path, processes: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "slimtorch.cli", "compress", str(recipe), "--out", str(out), "--quiet", "--force"]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [torchrun, "--nproc_per_node", str(processes), "-m", "slimtorch.cli", "compress", str(recipe), "--out", str(out),
               "--quiet", "--force"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    report = json.loads((out / "report.json").read_text())
    stage = next(s for s in report["stages"] if s["name"] == "distill")
    final = next(m for m in report["models"] if m["name"] == report["final"])
    return {"seconds": stage["seconds"], "accuracy": final["metrics"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "r.yaml"
        recipe.write_text(RECIPE.replace("EPOCHS", str(args.epochs)))
        for r in range(args.rounds):
            for processes in ((1, 2) if r % 2 == 0 else (2, 1)):  # alternate the order: machine load hits both alike
                results[processes].append(run(recipe, Path(tmp) / f"out{processes}", processes))
    one = statistics.median(x["seconds"] for x in results[1])
    two = statistics.median(x["seconds"] for x in results[2])
    print(f"{'processes':>9} {'distill s (median)':>19} {'runs':>24} {'final accuracy':>15}")
    for p, median in ((1, one), (2, two)):
        runs = ", ".join(f"{x['seconds']:.1f}" for x in results[p])
        print(f"{p:>9} {median:>19.2f} {runs:>24} {results[p][-1]['accuracy']:>15.4f}")
    print(f"speedup of 2 processes: {one / two:.2f}x")
    print(json.dumps({"machine": probe().to_json(), "epochs": args.epochs, "rounds": args.rounds, "one_process_s": one, "two_process_s": two,
                      "speedup": round(one / two, 3), "accuracy_one": results[1][-1]["accuracy"],
                      "accuracy_two": results[2][-1]["accuracy"]}))


if __name__ == "__main__":
    main()

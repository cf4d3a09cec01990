"""The CLI: one-line errors with exit code 2 and no traceback; commands that work end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slimtorch.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "slimtorch.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600, check=False)


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip().startswith("slimtorch 0.")


def test_bad_recipe_is_one_line_exit_2_no_traceback(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nteacher: {model: mlp}\nstages:\n  - prune: {sparsity: 1.5}\n")
    proc = cli("compress", str(recipe), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "prune.sparsity must be a float in [0, 1); got 1.5" in proc.stderr
    assert "line 4" in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "args, match",
    [
        (["validate", "nope.yaml"], "does not exist"),
        (["measure", "mlpp"], "unknown model reference 'mlpp'. Did you mean 'mlp'"),
        (["measure", "mlp", "--args", "{bad json"], "--args must be a JSON object"),
        (["measure", "mlp", "--data", "digitz"], "unknown data source 'digitz'. Did you mean 'digits'"),
        (["report", "no_such_dir"], "report"),
        (["measure", "mlp", "--evaluate", '{"latency": {"max_secs": 1}}'], "evaluate.latency.max_secs: Extra inputs"),
        (["measure", "mlp", "--evaluate", '{"latency": {"max_seconds": -1}}'], "evaluate.latency.max_seconds"),
        (["measure", "mlp", "--evaluate", "no_such_file.yaml"], "is neither (no such file)"),
        (["measure", "mlp", "--evaluate", "[1, 2]"], "is neither"),
    ],
)
def test_user_errors_exit_2(args, match):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert match in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_validate_good_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nteacher: {model: mlp}\nstages:\n  - prune: {sparsity: 0.5}\n  - quantize: {mode: dynamic_int8}\n")
    result = runner.invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 0 and "prune → quantize" in result.output


def test_measure_prints_a_row_and_writes_report(tmp_path):
    result = runner.invoke(app, ["measure", "mlp", "--args", '{"hidden": [16]}', "--batch-sizes", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["models"][0]["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert (tmp_path / "models" / "model" / "slimtorch.json").exists()


def test_measure_takes_the_evaluate_block_from_json_or_a_file(tmp_path):
    block = tmp_path / "evaluate.yaml"
    block.write_text("evaluate:\n  latency: {batch_sizes: [2], warmup: 1, repeats: 4, max_seconds: 5}\n  noise_levels: [0.5]\n")
    result = runner.invoke(app, ["measure", "mlp", "--evaluate", str(block), "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    model = json.loads((tmp_path / "a" / "report.json").read_text())["models"][0]
    assert list(model["latency_ms"]) == ["2"] and model["latency_ms"]["2"]["repeats"] == 4
    assert list(model["robustness"]) == ["noise_0.5"]
    # --batch-sizes overrides the block's sizes, keeping the rest
    result = runner.invoke(app, ["measure", "mlp", "--evaluate", '{"latency": {"repeats": 5}}', "--batch-sizes", "3",
                                 "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "report.json").read_text())["models"][0]["latency_ms"]["3"]["repeats"] == 5


def test_compress_quiet_then_report_rerenders(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: tiny\nteacher: {model: mlp, args: {hidden: [16]}, train: {epochs: 1}}\n"
        "stages:\n  - prune: {sparsity: 0.5}\n"
        "evaluate: {latency: {batch_sizes: [1], repeats: 3, warmup: 0}}\n"
    )
    out = tmp_path / "out"
    proc = cli("compress", str(recipe), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "1_prune" in proc.stdout and "eta" not in proc.stdout
    (out / "report.md").unlink()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0 and (out / "report.md").exists()
    proc = cli("compress", str(recipe), "--out", str(out), "--quiet")
    assert proc.returncode == 2 and "already exists; pass --resume" in proc.stderr


def test_demo_end_to_end(tmp_path):
    """The embedded demo: teacher → distill → prune → int8, report files written, table printed."""
    out = tmp_path / "demo"
    proc = cli("demo", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    for name in ("report.json", "report.md", "report.html", "pareto.png"):
        assert (out / name).is_file()
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["train_teacher", "distill", "prune", "quantize"]
    models = {m["name"]: m for m in report["models"]}
    teacher, final = models["teacher"], models[report["final"]]
    assert final["runtime"] == "onnxruntime"
    assert teacher["size_bytes"] >= 20 * final["size_bytes"]  # the demo's size goal
    assert final["metrics"]["accuracy"] >= teacher["metrics"]["accuracy"] - 0.02
    assert "3_quantize" in proc.stdout and "onnxruntime" in proc.stdout  # the table is printed

"""Tracking against the real tools: a local MLflow store read back with MLflow's client, TensorBoard event files
read back with TensorBoard's EventAccumulator, and a W&B offline run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slimtorch.errors import RecipeError
from slimtorch.recipe import load_recipe
from slimtorch.track.config import TrackingConfig
from slimtorch.track.log_run import recipe_params, training_curves

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

SMALL = {
    "name": "tracked",
    "teacher": {"model": "mlp", "args": {"hidden": [32]}, "train": {"epochs": 3, "lr": 0.01}},
    "student": {"model": "mlp", "args": {"hidden": [16]}},
    "stages": [{"distill": {"epochs": 2}}, {"prune": {"sparsity": 0.5}}],
    "evaluate": {"latency": {"batch_sizes": [1], "repeats": 3, "warmup": 0}, "noise_levels": [0.1]},
    "tracking": {"mlflow": {}, "tensorboard": {}},
}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    from slimtorch.run.pipeline import compress

    out = tmp_path_factory.mktemp("track") / "run"
    result = compress(copy.deepcopy(SMALL), out)
    return out, result.report


def _client(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")


def test_mlflow_store_holds_params_curves_figures_and_reports(tracked_run):
    out, report = tracked_run
    client = _client(out)
    experiment = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.runName"] == "tracked"
    assert run.data.params["stages.0.distill.epochs"] == "2" and run.data.params["teacher.train.epochs"] == "3"
    # the teacher's curve: one point per epoch, the same losses fit recorded
    teacher = client.get_metric_history(run.info.run_id, "curve/teacher/loss")
    assert [p.step for p in teacher] == [0, 1, 2]
    assert [p.value for p in teacher] == pytest.approx([h["loss"] for h in training_curves(out)["teacher"]])
    assert len(client.get_metric_history(run.info.run_id, "curve/01_distill/student/val")) == 2
    final = report.final_model
    assert run.data.metrics["final/accuracy"] == pytest.approx(final.metrics["accuracy"])
    assert run.data.metrics[f"model/{final.name}/nonzero_params"] == final.nonzero_params
    assert run.data.metrics["model/teacher/latency_ms_p50_b1"] == pytest.approx(report.baseline_model.latency_ms["1"].p50)
    files = {f.path for folder in ("report", "plots") for f in client.list_artifacts(run.info.run_id, folder)}
    assert {"report/report.md", "report/report.json", "report/recipe.yaml", "plots/pareto.png"} <= files
    stored = Path(client.download_artifacts(run.info.run_id, "report/report.json", str(out / "dl")))
    assert json.loads(stored.read_text())["final"] == report.final


def test_tensorboard_event_files_hold_curves_figures_text_and_plots(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, report = tracked_run
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("curve/teacher/val")] == [0, 1, 2]
    assert events.Scalars("final/accuracy")[0].value == pytest.approx(report.final_model.metrics["accuracy"])
    assert "plots/pareto.png" in tags["images"]
    assert {"report/report.md/text_summary", "params/text_summary"} <= set(tags["tensors"])


def test_a_sweep_logs_one_child_run_per_variant(tmp_path):
    from slimtorch.run.sweep import sweep

    recipe = {**copy.deepcopy(SMALL), "name": "sw", "tracking": {"mlflow": {}}, "stages": [{"prune": {"sparsity": 0.5}}]}
    recipe["teacher"]["train"]["epochs"] = 1
    sweep(recipe, ["prune.sparsity=0.3,0.6"], tmp_path / "sw")
    client = _client(tmp_path / "sw")
    runs = client.search_runs([client.get_experiment_by_name("sw").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["mlflow.runName"] for r in children) == ["sparsity-0.3", "sparsity-0.6"]
    assert {r.data.params["stages.0.prune.sparsity"] for r in children} == {"0.3", "0.6"}
    assert "model/sparsity-0.6/accuracy" in parent.data.metrics
    # variants are not logged a second time as runs of their own
    assert len(runs) == 3


def test_wandb_offline_run_holds_params_curves_and_figures(tmp_path):
    pytest.importorskip("wandb")
    from slimtorch.run.pipeline import compress
    from tests.track.wandb_log import read_run

    recipe = {**copy.deepcopy(SMALL), "name": "wb", "stages": [], "tracking": {"wandb": {}}}
    recipe["teacher"]["train"]["epochs"] = 2
    report = compress(recipe, tmp_path / "wb").report
    (run_file,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")  # what `wandb sync` would upload
    run = read_run(run_file)
    assert run["config"]["teacher.train.epochs"] == "2"
    curve = [(h["curve/teacher/epoch"], h["curve/teacher/loss"]) for h in run["history"] if "curve/teacher/loss" in h]
    assert curve == [(e, pytest.approx(h["loss"])) for e, h in enumerate(training_curves(tmp_path / "wb")["teacher"])]
    assert run["summary"]["final/accuracy"] == pytest.approx(report.final_model.metrics["accuracy"])


def test_cli_track_adds_a_backend_and_rejects_an_unknown_one(tmp_path):
    from slimtorch.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({**SMALL, "stages": [], "tracking": None, "teacher": {"model": "mlp", "args": {"hidden": [8]}}}))
    bad = CliRunner().invoke(app, ["compress", str(recipe), "--out", str(tmp_path / "o"), "--track", "neptune"])
    assert bad.exit_code == 2 and "--track must be one of mlflow, tensorboard, wandb; got 'neptune'" in bad.output
    ok = CliRunner().invoke(app, ["compress", str(recipe), "--out", str(tmp_path / "o"), "--track", "tensorboard", "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert list((tmp_path / "o" / "tensorboard").glob("events.out.tfevents.*"))


def test_recipe_tracking_block_is_strict():
    with pytest.raises(RecipeError, match="tracking names no tracker"):
        load_recipe({**SMALL, "tracking": {}})
    with pytest.raises(RecipeError, match="tracking_ur"):
        load_recipe({**SMALL, "tracking": {"mlflow": {"tracking_url": "x"}}})
    with pytest.raises(RecipeError, match="mode"):
        load_recipe({**SMALL, "tracking": {"wandb": {"mode": "cloud"}}})
    assert load_recipe(SMALL).tracking == TrackingConfig.model_validate({"mlflow": {}, "tensorboard": {}})


def test_recipe_params_flatten_nested_blocks():
    params = recipe_params({"name": "r", "stages": [{"prune": {"sparsity": 0.5, "layers": ["a", "b"]}}], "student": None, "x": True})
    assert params == {"name": "r", "stages.0.prune.sparsity": "0.5", "stages.0.prune.layers": '["a", "b"]', "student": "null",
                      "x": "true"}


def test_a_tracker_that_cannot_start_is_one_clear_error_and_the_report_is_kept(tmp_path):
    from slimtorch.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({**SMALL, "stages": [], "teacher": {"model": "mlp", "args": {"hidden": [8]}},
                                  "tracking": {"mlflow": {"tracking_uri": "nosuchscheme://here"}}}))
    result = CliRunner().invoke(app, ["compress", str(recipe), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "the experiment tracker could not start a run" in result.output and "report is written" in result.output
    assert (tmp_path / "o" / "report.json").is_file()

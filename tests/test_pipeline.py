import json

import pytest
import torch

import slimtorch
from slimtorch.errors import OutputDirError
from slimtorch.run.pipeline import compress

SMALL = {
    "name": "small",
    "seed": 0,
    "data": {"source": "digits", "batch_size": 64},
    "teacher": {"model": "mlp", "args": {"hidden": [64]}, "train": {"epochs": 3, "lr": 0.01}},
    "student": {"model": "mlp", "args": {"hidden": [16]}},
    "stages": [
        {"distill": {"temperature": 2.0, "alpha": 0.5, "epochs": 3, "lr": 0.003}},
        {"prune": {"sparsity": 0.5}},
        {"quantize": {"mode": "dynamic_int8", "runtime": "onnxruntime"}},
    ],
    "evaluate": {"latency": {"batch_sizes": [1, 8], "repeats": 5, "warmup": 1}},
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "small"
    events: list[str] = []
    result = compress(SMALL, out, events=events.append)
    return out, result, events


def test_report_files_and_schema(small_run):
    out, _result, _ = small_run
    for name in ("report.json", "report.md", "pareto.png", "recipe.yaml"):
        assert (out / name).is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"] == "teacher" and report["final"] == "3_quantize"
    assert [m["name"] for m in report["models"]] == ["teacher", "1_distill", "2_prune", "3_quantize"]
    for m in report["models"]:
        assert {"name", "stage", "params", "nonzero_params", "size_bytes", "macs", "runtime", "latency_ms",
                "metrics", "agreement", "robustness"} <= set(m)
        assert set(m["latency_ms"]) == {"1", "8"} and m["latency_ms"]["1"]["p50"] > 0
        assert 0 <= m["metrics"]["accuracy"] <= 1 and set(m["metrics"]["per_class_accuracy"]) == {str(c) for c in range(10)}
    assert [s["status"] for s in report["stages"]] == ["done"] * 4
    models = {m["name"]: m for m in report["models"]}
    assert models["2_prune"]["nonzero_params"] < models["1_distill"]["nonzero_params"]
    assert models["3_quantize"]["runtime"] == "onnxruntime"
    assert models["3_quantize"]["size_bytes"] < models["2_prune"]["size_bytes"]
    assert models["teacher"]["metrics"]["accuracy"] > 0.8


def test_every_model_reloads_and_matches_its_report(small_run, digits):
    out, result, _ = small_run
    report = result.report
    from slimtorch.measure.accuracy import accuracy_of, predict

    for m in report.models:
        model = slimtorch.load(out / "models" / m.name)
        logits, labels = predict(model, digits.loader("test"))
        assert accuracy_of(logits, labels) == pytest.approx(m.metrics["accuracy"], abs=1e-6)


def test_refuses_existing_dir_then_resume_reuses_everything(small_run):
    out, result, _ = small_run
    with pytest.raises(OutputDirError, match="already exists; pass --resume to continue that run or --force"):
        compress(SMALL, out)
    events: list[str] = []
    again = compress(SMALL, out, resume=True, events=events.append)
    assert sum("reusing" in e for e in events) == 4
    assert [m.metrics for m in again.report.models] == [m.metrics for m in result.report.models]


def test_a_run_written_in_the_earlier_state_layout_still_resumes(small_run, tmp_path):
    import shutil

    out, result, _ = small_run
    copy = tmp_path / "old_layout"
    shutil.copytree(out, copy)
    state = json.loads((copy / "state.json").read_text())
    teacher = state["steps"]["teacher"]  # the earlier layout: a teacher's one `measurement` and its `seconds`
    state["steps"]["teacher"] = {"fingerprint": teacher["fingerprint"], "measurement": teacher["measurements"][0],
                                 "seconds": 1.0, "row": teacher["row"], "evaluate": teacher["evaluate"]}
    for entry in list(state["steps"].values())[1:]:
        entry.pop("output")
    (copy / "state.json").write_text(json.dumps(state))
    events: list[str] = []
    again = compress(SMALL, copy, resume=True, events=events.append)
    assert sum("reusing" in e for e in events) == 4  # nothing ran again
    assert [m.metrics for m in again.report.models] == [m.metrics for m in result.report.models]


def test_changed_stage_recomputes_from_there(small_run, tmp_path):
    import shutil

    out, _, _ = small_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    changed = json.loads(json.dumps(SMALL))
    changed["stages"][1]["prune"]["sparsity"] = 0.7
    events: list[str] = []
    result = compress(changed, copy, resume=True, events=events.append)
    reused = [e for e in events if "reusing" in e]
    assert len(reused) == 2  # teacher and distill; prune and quantize ran again
    prune = result.report.model("2_prune")
    assert prune.nonzero_params < prune.params * 0.5


def test_force_refuses_foreign_directories(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(OutputDirError, match="does not look like a slimtorch run"):
        compress(SMALL, tmp_path, force=True)
    assert (tmp_path / "precious.txt").exists()


def test_out_path_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OutputDirError, match="is a file"):
        compress(SMALL, f)


def test_resource_limit_refuses_before_training(tmp_path):
    from slimtorch.errors import RecipeError

    recipe = {**SMALL, "resources": {"max_params": 1000}}
    with pytest.raises(RecipeError, match=r"has 4,810 parameters, over resources.max_params=1,000"):
        compress(recipe, tmp_path / "r")
    assert not (tmp_path / "r" / "models").exists()


def test_recipe_without_student_prunes_a_copy_of_the_teacher(tmp_path):
    recipe = {"name": "copy", "teacher": {"model": "mlp", "args": {"hidden": [32]}, "train": {"epochs": 2}},
              "stages": [{"prune": {"sparsity": 0.3}}], "evaluate": {"latency": {"batch_sizes": [1], "repeats": 3, "warmup": 0}}}
    result = compress(recipe, tmp_path / "c")
    teacher, pruned = result.report.models
    assert pruned.params == teacher.params and pruned.nonzero_params < teacher.nonzero_params
    assert isinstance(result.model, torch.nn.Module)


def test_a_baseline_near_chance_is_called_out_and_a_trained_one_is_not(small_run, tmp_path):
    _out, result, _ = small_run
    assert not [w for w in result.report.warnings if "near chance" in w]  # the trained teacher (> 80 %)
    untrained = {**SMALL, "name": "untrained", "teacher": {"model": "mlp", "args": {"hidden": [16]}},  # random init: ~10 %
                 "stages": [], "evaluate": {"latency": {"batch_sizes": [1], "repeats": 3, "warmup": 0}, "noise_levels": []}}
    report = compress(untrained, tmp_path / "untrained").report
    (w,) = [w for w in report.warnings if "near chance" in w]
    assert w.startswith("the baseline teacher scores") and "(10.0% for 10 classes)" in w and "teacher.train.epochs" in w


def test_pruning_that_cost_accuracy_with_no_recovery_after_it_is_called_out(tmp_path):
    base = {**SMALL, "student": None, "evaluate": {"latency": {"batch_sizes": [1], "repeats": 3, "warmup": 0}, "noise_levels": []}}
    bare = compress({**base, "name": "bare", "stages": [{"prune": {"sparsity": 0.95}}]}, tmp_path / "bare").report
    (w,) = [w for w in bare.warnings if "nothing trained it back" in w]
    assert w.startswith("1_prune lost ") and "points of accuracy" in w and "finetune_epochs: 5" in w
    tuned = compress({**base, "name": "tuned", "stages": [{"prune": {"sparsity": 0.95}}, {"finetune": {"epochs": 1}}]},
                     tmp_path / "tuned").report
    assert not [w for w in tuned.warnings if "nothing trained it back" in w]


def test_the_plan_is_a_step_reused_on_resume_also_from_the_earlier_state_layout(tmp_path):
    recipe = {
        "name": "planned", "seed": 0, "data": {"source": "digits", "batch_size": 64},
        "teacher": {"model": "mlp", "args": {"hidden": [64]}, "train": {"epochs": 2, "lr": 0.01}},
        "target": {"size_mb": 1.0, "batch": 1, "sparsities": [0.0, 0.5], "quantize": ["none"], "recover_epochs": 1, "repeats": 5},
        "evaluate": {"latency": {"batch_sizes": [1], "repeats": 3, "warmup": 0}},
    }
    out = tmp_path / "run"
    first = compress(recipe, out)
    state = json.loads((out / "state.json").read_text())
    assert list(state["steps"])[:2] == ["teacher", "plan"]
    plan = state["steps"]["plan"]
    assert set(plan) == set(state["steps"]["teacher"])  # one entry shape for every step
    state["steps"]["plan"] = {"fingerprint": plan["fingerprint"], "plan": plan["output"]}  # the earlier layout
    (out / "state.json").write_text(json.dumps(state))
    events: list[str] = []
    again = compress(recipe, out, resume=True, events=events.append)
    assert "plan: reusing the finished search" in events
    assert sum("reusing" in e for e in events) == len(state["steps"])  # nothing ran again
    assert again.report.extra["plan"] == first.report.extra["plan"]
    assert [m.metrics for m in again.report.models] == [m.metrics for m in first.report.models]

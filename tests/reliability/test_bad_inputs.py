"""The bad-input catalogue: every mistake a user can make gets the exact error class and a message
saying what was wrong and how to fix it. Through the CLI the same mistake is one line, exit code 2,
no traceback.

One table (``CASES``); each case runs through the Python API (exact class, message) and, where a
command exists for it, through the CLI in-process (exit 2, one `error:` line, no traceback).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from slimtorch import artifact
from slimtorch.cli import app
from slimtorch.core import RunContext
from slimtorch.errors import (
    ArtifactError,
    DataError,
    ModelRefError,
    OutputDirError,
    RecipeError,
    ShapeMismatchError,
    SlimtorchError,
    TrainingError,
    UnsupportedModuleError,
)
from slimtorch.models import build_model
from slimtorch.recipe import load_recipe
from slimtorch.report import load_report
from slimtorch.run.pipeline import compress
from slimtorch.train import TrainConfig, cross_entropy, fit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# Line numbers below refer to this text: 1 name, 2 data, 3 teacher, 4 student, 5 stages, 6 distill,
# 7 prune, 8 quantize, 9 evaluate.
GOOD = """\
name: cat
data: {source: "user_code:tiny", batch_size: 16}
teacher: {model: mlp, args: {hidden: [8]}, train: {epochs: 1}}
student: {model: mlp, args: {hidden: [4]}}
stages:
  - distill: {temperature: 2.0, alpha: 0.5, epochs: 1}
  - prune: {sparsity: 0.5}
  - quantize: {mode: dynamic_int8, runtime: onnxruntime}
evaluate: {latency: {batch_sizes: [1], repeats: 3, warmup: 0}, noise_levels: [0.1]}
"""
# A recipe that fails at run time only through what its `teacher:`/`data:`/`stages:` lines say.
RUN = """\
name: cat
data: {data}
teacher: {teacher}
{student}stages: {stages}
resources: {resources}
evaluate: {{latency: {{batch_sizes: [1], repeats: 3, warmup: 0}}, noise_levels: [0.1]}}
"""
TINY = '{source: "user_code:tiny", batch_size: 16}'
MLP = "{model: mlp, args: {hidden: [8]}}"
TRAINED = "{model: mlp, args: {hidden: [8]}, train: {epochs: 1}}"


def edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


def run(data: str = TINY, teacher: str = MLP, stages: str = "[]", student: str = "", resources: str = "{}") -> str:
    return RUN.format(data=data, teacher=teacher, stages=stages, student=f"student: {student}\n" if student else "", resources=resources)


@dataclass(frozen=True)
class Case:
    """One mistake. ``how``: "validate" (load the YAML), "compress" (run it) or "api" (call ``api``)."""

    id: str
    error: type[SlimtorchError]
    what: str  # regex: what was wrong
    fix: str  # regex: how to fix it
    how: str = "validate"
    recipe: str = GOOD
    flags: tuple[str, ...] = ()
    out: Callable[[Path], Path] = lambda tmp: tmp / "out"
    api: Callable[[Path], object] | None = None
    cli: Callable[[Path], list[str]] | None = None
    extra: dict = field(default_factory=dict)


# -- cases that need files -------------------------------------------------------------------------

def _existing_run(tmp: Path) -> Path:
    out = tmp / "out"
    out.mkdir()
    (out / "state.json").write_text('{"steps": {}}')
    (out / ".slimtorch-run.json").write_text('{"created_by": "slimtorch"}')  # what every run directory holds
    return out


def _foreign_dir(tmp: Path) -> Path:
    out = tmp / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    return out


def _a_file(tmp: Path) -> Path:
    (tmp / "out").write_text("not a directory")
    return tmp / "out"


def _under_a_file(tmp: Path) -> Path:
    (tmp / "plain-file").write_text("x")
    return tmp / "plain-file" / "out"  # mkdir fails with ENOTDIR, even for root


def _state_not_an_object(tmp: Path) -> Path:
    out = _existing_run(tmp)
    (out / "state.json").write_text('["teacher"]')
    return out


def _corrupted_state(tmp: Path) -> Path:
    out = _existing_run(tmp)
    (out / "state.json").write_text('{"steps": {"teacher": ')
    return out


def _checkpoint(tmp: Path) -> tuple[torch.nn.Module, Path]:
    """A real 1-epoch checkpoint of a tiny model under tmp/ckpt; returns (fresh model, dir)."""
    from slimtorch.data import build_data

    data = build_data("user_code:tiny", batch_size=16)
    ctx = RunContext(data=data, work_dir=tmp / "w")
    model = build_model("mlp", {"hidden": [4]}, input_shape=data.input_shape, num_classes=3)
    fit(model, cross_entropy, data.loader("train"), TrainConfig(epochs=1), ctx, checkpoint_dir=tmp / "ckpt")
    return build_model("mlp", {"hidden": [4]}, input_shape=data.input_shape, num_classes=3), (ctx, data)


def _resume_checkpoint(tmp: Path, damage: Callable[[Path], None]) -> None:
    fresh, (ctx, data) = _checkpoint(tmp)
    damage(tmp / "ckpt" / "last")
    fit(fresh, cross_entropy, data.loader("train"), TrainConfig(epochs=2), ctx, checkpoint_dir=tmp / "ckpt")


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        path = ckpt / name
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])

    return damage


def _meta(**changes) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        meta = json.loads((ckpt / "meta.json").read_text())
        (ckpt / "meta.json").write_text(json.dumps({**meta, **changes}))

    return damage


def _old_artifact(tmp: Path) -> Path:
    model = build_model("mlp", {"hidden": [4]}, input_shape=(8,), num_classes=3)
    artifact.save(model, tmp / "m")
    spec = json.loads((tmp / "m" / "slimtorch.json").read_text())
    (tmp / "m" / "slimtorch.json").write_text(json.dumps({**spec, "artifact_version": 99, "slimtorch_version": "7.0.0"}))
    return tmp / "m"


def _truncated_artifact(tmp: Path) -> Path:
    model = build_model("mlp", {"hidden": [4]}, input_shape=(8,), num_classes=3)
    artifact.save(model, tmp / "m")
    weights = tmp / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return tmp / "m"


def _nan_after_two_epochs(tmp: Path) -> None:
    """The loss turns NaN in epoch 2: training stops, names the step, keeps the epoch-1 checkpoint."""
    from slimtorch.data import build_data

    data = build_data("user_code:tiny", batch_size=16)
    ctx = RunContext(data=data, work_dir=tmp / "w")
    model = build_model("mlp", {"hidden": [4]}, input_shape=data.input_shape, num_classes=3)
    loader = data.loader("train")
    calls = []

    def loss(m, x, y):
        calls.append(1)
        value = cross_entropy(m, x, y)
        return value * math.nan if len(calls) > 2 * len(loader) else value

    try:
        fit(model, loss, loader, TrainConfig(epochs=4), ctx, checkpoint_dir=tmp / "ckpt")
    finally:
        meta = json.loads((tmp / "ckpt" / "last" / "meta.json").read_text())
        assert meta["epoch"] == 1 and meta["steps"] == 2 * len(loader)  # the last good checkpoint survives


CASES = [
    # --- recipe text: syntax, keys, types -------------------------------------------------------
    Case("yaml-syntax-error", RecipeError, r"cat.yaml line 2: invalid YAML \(expected ',' or '\}', but got", r"Check indentation",
         recipe=edit("data: {source: \"user_code:tiny\", batch_size: 16}", "data: {source: \"user_code:tiny\" batch_size: 16")),
    Case("unknown-key-suggests-closest", RecipeError, r"line 6: unknown key 'temprature' in stages\[0\]\.distill", r"Did you mean 'temperature'\?",
         recipe=edit("temperature: 2.0", "temprature: 2.0")),
    Case("unknown-top-level-key", RecipeError, r"line 9: unknown key 'evaluat' in the recipe", r"Did you mean 'evaluate'\?",
         recipe=edit("evaluate:", "evaluat:")),
    Case("unknown-stage", RecipeError, r"line 7: unknown stage 'prnue'", r"Did you mean 'prune'\?", recipe=edit("- prune:", "- prnue:")),
    Case("wrong-type-int", RecipeError, r"line 3: teacher\.train\.epochs: Input should be a valid integer", r"got 'one'",
         recipe=edit("train: {epochs: 1}", "train: {epochs: one}")),
    Case("wrong-type-stages-not-a-list", RecipeError, r"`stages` must be a list", r"like `- prune: \{sparsity: 0.5\}`",
         recipe="name: cat\nteacher: {model: mlp}\nstages: {prune: {sparsity: 0.5}}\n"),
    Case("wrong-type-recipe-not-a-mapping", RecipeError, r"a recipe must be a mapping", r"\(name, data, teacher, stages", recipe="- prune\n- quantize\n"),
    Case("missing-teacher", RecipeError, r"missing required key 'teacher'", r"teacher",
         recipe=edit("teacher: {model: mlp, args: {hidden: [8]}, train: {epochs: 1}}\n", "")),
    Case("model-and-auto-both", RecipeError, r"give either `model` or `auto`, not both", r"not both",
         recipe=edit("student: {model: mlp, args: {hidden: [4]}}", "student: {model: mlp, auto: {width: 0.5}}")),
    # --- values out of range ------------------------------------------------------------------
    Case("sparsity-above-one", RecipeError, r"line 7: .*prune\.sparsity must be a float in \[0, 1\); got 1\.5", r"did you mean 0\.15\?",
         recipe=edit("sparsity: 0.5", "sparsity: 1.5")),
    Case("sparsity-exactly-one", RecipeError, r"prune\.sparsity must be a float in \[0, 1\); got 1\.0", r"fraction of weights removed",
         recipe=edit("sparsity: 0.5", "sparsity: 1.0")),
    Case("sparsity-negative", RecipeError, r"prune\.sparsity must be a float in \[0, 1\); got -0\.1", r"fraction of weights removed",
         recipe=edit("sparsity: 0.5", "sparsity: -0.1")),
    Case("n-greater-than-m", RecipeError, r"needs 0 < N < M; got N=4, M=2", r"Did you mean '2:4'\?",
         recipe=edit("sparsity: 0.5", "granularity: '4:2'")),
    Case("temperature-zero", RecipeError, r"distill\.temperature must be > 0; got 0", r"2 is a good start",
         recipe=edit("temperature: 2.0", "temperature: 0")),
    Case("temperature-negative", RecipeError, r"distill\.temperature must be > 0; got -1", r"2 is a good start",
         recipe=edit("temperature: 2.0", "temperature: -1")),
    Case("lambda-above-one", RecipeError, r"distill\.alpha must be in \[0, 1\]; got 1\.5", r"0 = soft targets only, 1 = labels only",
         recipe=edit("alpha: 0.5", "alpha: 1.5")),
    Case("lambda-negative", RecipeError, r"distill\.alpha must be in \[0, 1\]; got -0\.2", r"0 = soft targets only",
         recipe=edit("alpha: 0.5", "alpha: -0.2")),
    Case("quantization-mode-unknown", RecipeError, r"line 8: stages\[2\]\.quantize\.mode: .*got 'int3'", r"Input should be 'dynamic_int8', 'static_int8'",
         recipe=edit("mode: dynamic_int8", "mode: int3")),
    Case("quantization-mode-wrong-runtime", RecipeError, r"'int4_weight_only' is not available for runtime 'onnxruntime'", r"runs on runtime: torch",
         recipe=edit("mode: dynamic_int8", "mode: int4_weight_only")),
    Case("labeled-fraction-zero", RecipeError, r"data\.labeled_fraction: Input should be greater than 0", r"got 0",
         recipe=edit("batch_size: 16}", "batch_size: 16, labeled_fraction: 0}")),
    Case("resources-limit-not-positive", RecipeError, r"resources\.max_params: Input should be greater than 0", r"got 0",
         recipe=GOOD + "resources: {max_params: 0}\n"),
    Case("recipe-file-missing", RecipeError, r"recipe file '.*nope\.yaml' does not exist", r"Check the path",
         api=lambda tmp: load_recipe(tmp / "nope.yaml"), cli=lambda tmp: ["validate", str(tmp / "nope.yaml")]),
    # --- references that do not resolve --------------------------------------------------------
    Case("model-reference-unknown", ModelRefError, r"unknown model reference 'mlpp'", r"Did you mean 'mlp'\?", how="compress",
         recipe=run(teacher="{model: mlpp}")),
    Case("model-module-does-not-import", ModelRefError, r"cannot import module 'no_such_pkg\.models'", r"on PYTHONPATH", how="compress",
         recipe=run(teacher="{model: 'no_such_pkg.models:build'}")),
    Case("model-function-missing", ModelRefError, r"module 'user_code' has no attribute 'nope'", r"It has: .*no_params", how="compress",
         recipe=run(teacher="{model: 'user_code:nope'}")),
    Case("model-factory-returns-non-module", ModelRefError, r"returned str, not a torch\.nn\.Module", r"torch\.nn\.Module", how="compress",
         recipe=run(teacher="{model: 'user_code:not_a_module'}")),
    Case("model-factory-wrong-args", ModelRefError, r"cannot take args \['width'\]", r"Its parameters: \(classes", how="compress",
         recipe=run(teacher="{model: 'user_code:no_params', args: {width: 3}}")),
    Case("model-file-missing-hf-dir", ModelRefError, r"Hugging Face model directory '/nonexistent/minilm' does not exist", r"give a local directory with config\.json",
         how="compress", recipe=run(teacher="{model: 'hf:/nonexistent/minilm'}")),
    Case("model-dir-not-an-artifact", ArtifactError, r"is not a slimtorch model directory: slimtorch\.json is missing", r"slimtorch\.json",
         how="compress", recipe=run(teacher="{model: '/proc/self'}")),
    Case("data-source-unknown", RecipeError, r"unknown data source 'digitz'", r"Did you mean 'digits'\?", how="compress",
         recipe=run(data="{source: digitz}")),
    Case("data-module-does-not-import", DataError, r"cannot import module 'nopkg'", r"on PYTHONPATH", how="compress",
         recipe=run(data="{source: 'nopkg:data'}")),
    Case("data-source-returns-wrong-type", DataError, r"must return a dict with keys 'train', 'val', 'test'", r"got list", how="compress",
         recipe=run(data="{source: 'user_code:not_a_dict'}")),
    # --- data and models that do not fit together ----------------------------------------------
    Case("empty-dataset", DataError, r"returned an empty 'val' split", r"every split needs examples", how="compress",
         recipe=run(data="{source: 'user_code:empty_val'}")),
    Case("labels-out-of-range", DataError, r"labels go up to 2 but num_classes is 2", r"labels must be 0\.\.1", how="compress",
         recipe=run(data='{source: "user_code:tiny", num_classes: 2}')),
    Case("labels-negative", DataError, r"labels must be class indices 0\.\.C-1", r"found -3", how="compress",
         recipe=run(data="{source: 'user_code:negative_labels'}")),
    Case("teacher-student-shapes-differ", ShapeMismatchError, r"teacher 0 outputs shape \(2, 3\) but the student outputs \(2, 5\)",
         r"give the student the teacher's num_classes", how="compress",
         recipe=run(teacher=TRAINED, student="{model: mlp, args: {hidden: [4], num_classes: 5}}", stages="[{distill: {epochs: 1}}]")),
    Case("layer-name-does-not-exist", RecipeError, r"prune\.layers\.include: the model has no module 'net\.99'", r"Close names: net\.3", how="compress",
         recipe=run(stages="[{prune: {sparsity: 0.5, layers: {include: [net.99]}}}]")),
    Case("no-prunable-layers", UnsupportedModuleError, r"nothing in this model can be pruned", r"it has no Linear or Conv layer", how="compress",
         recipe=run(teacher="{model: 'user_code:no_params'}", stages="[{prune: {sparsity: 0.5}}]")),
    Case("nothing-to-train", UnsupportedModuleError, r"FixedProjection has no trainable parameters", r"Remove the training stage", how="compress",
         recipe=run(teacher="{model: 'user_code:no_params'}", stages="[{finetune: {epochs: 1}}]")),
    Case("lora-target-does-not-exist", UnsupportedModuleError, r"lora\.target_modules \['nope'\] matched no", r"Layers LoRA can adapt: net\.1",
         how="compress", recipe=run(stages="[{lora: {rank: 2, epochs: 1, target_modules: [nope]}}]")),
    Case("non-finite-inputs", DataError, r"'train' split: inputs hold 1 non-finite value\(s\) \(NaN\) in 1 example\(s\), the first is item 0",
         r"drop or impute them", how="compress", recipe=run(data="{source: 'user_code:nan_inputs'}", teacher=TRAINED)),
    Case("non-finite-loss-in-run", TrainingError, r"train teacher: loss became nan at epoch 0, step 0", r"check the inputs for NaN/inf",
         how="compress", recipe=run(teacher="{model: 'user_code:overflowing', train: {epochs: 1}}")),
    Case("non-finite-loss-keeps-last-good-checkpoint", TrainingError, r"loss became nan at epoch 2, step 6.*restored to its last good weights",
         r"Lower the learning rate", api=_nan_after_two_epochs),
    Case("over-max-params", RecipeError, r"model 'mlp' has 99 parameters, over resources\.max_params=10", r"Pick a smaller model or raise the limit",
         how="compress", recipe=run(resources="{max_params: 10}")),
    Case("over-max-memory", RecipeError, r"needs about 0\.00158 MB to train .* over resources\.max_memory_mb=0\.0001",
         r"Pick a smaller model or raise the limit", how="compress", recipe=run(teacher=TRAINED, resources="{max_memory_mb: 0.0001}")),
    # --- output directory ------------------------------------------------------------------------
    Case("output-dir-exists", OutputDirError, r"already exists", r"pass --resume to continue that run or --force to replace it",
         how="compress", recipe=run(), out=_existing_run),
    Case("force-on-foreign-dir", OutputDirError, r"--force refuses to delete .*: it does not look like a slimtorch run", r"Choose another --out",
         how="compress", recipe=run(), out=_foreign_dir, flags=("--force",)),
    Case("output-path-is-a-file", OutputDirError, r"output path .* is a file", r"give a directory path with --out", how="compress",
         recipe=run(), out=_a_file),
    Case("output-dir-unwritable-under-a-file", OutputDirError, r"cannot write to output directory .*plain-file/out \(Not a directory\)",
         r"choose a writable --out", how="compress", recipe=run(), out=_under_a_file),
    Case("output-dir-unwritable-sysfs", OutputDirError, r"cannot write to output directory /sys/slimtorch-out \(Operation not permitted\)",
         r"choose a writable --out", how="compress", recipe=run(), out=lambda tmp: Path("/sys/slimtorch-out")),
    Case("resume-state-corrupted", OutputDirError, r"state\.json is corrupted", r"use --force to start the run again", how="compress",
         recipe=run(), out=_corrupted_state, flags=("--resume",)),
    Case("resume-state-not-an-object", OutputDirError, r"state\.json is corrupted", r"use --force to start the run again", how="compress",
         recipe=run(), out=_state_not_an_object, flags=("--resume",)),
    # --- checkpoints and saved models --------------------------------------------------------------
    Case("checkpoint-weights-truncated", ArtifactError, r"checkpoint .*last is corrupted or incomplete", r"delete it to start the stage again",
         api=lambda tmp: _resume_checkpoint(tmp, _truncate("model.safetensors"))),
    Case("checkpoint-optimizer-truncated", ArtifactError, r"checkpoint .*last is corrupted or incomplete", r"delete it to start the stage again",
         api=lambda tmp: _resume_checkpoint(tmp, _truncate("optim.pt"))),
    Case("checkpoint-meta-truncated", ArtifactError, r"checkpoint .*last is corrupted or incomplete", r"delete it to start the stage again",
         api=lambda tmp: _resume_checkpoint(tmp, _truncate("meta.json"))),
    Case("checkpoint-other-version", ArtifactError, r"written by slimtorch 9\.9\.9 \(checkpoint format 99\); this slimtorch .* reads format 2",
         r"Delete it \(or run with --force\)", api=lambda tmp: _resume_checkpoint(tmp, _meta(checkpoint_version=99, slimtorch_version="9.9.9"))),
    Case("saved-model-other-version", ArtifactError, r"was written by slimtorch 7\.0\.0 with artifact format 99", r"Re-create it with this version",
         api=lambda tmp: artifact.load(_old_artifact(tmp)), cli=lambda tmp: ["measure", str(_old_artifact(tmp))]),
    Case("saved-model-truncated", ArtifactError, r"model\.safetensors is missing or corrupted", r"re-run the stage that wrote it",
         api=lambda tmp: artifact.load(_truncated_artifact(tmp)), cli=lambda tmp: ["measure", str(_truncated_artifact(tmp))]),
    Case("report-missing", ArtifactError, r"no report at .*report\.json", r"run `slimtorch compress RECIPE --out DIR`",
         api=lambda tmp: load_report(tmp), cli=lambda tmp: ["report", str(tmp)]),
]


def test_catalogue_is_big_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


@pytest.fixture(autouse=True)
def _user_code_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def _recipe_file(case: Case, tmp: Path) -> Path:
    path = tmp / "cat.yaml"
    path.write_text(case.recipe)
    return path


def _call_api(case: Case, tmp: Path) -> None:
    if case.api is not None:
        case.api(tmp)
    elif case.how == "validate":
        load_recipe(_recipe_file(case, tmp))
    else:
        compress(_recipe_file(case, tmp), case.out(tmp), resume="--resume" in case.flags, force="--force" in case.flags)


def _cli_args(case: Case, tmp: Path) -> list[str] | None:
    if case.cli is not None:
        return case.cli(tmp)
    if case.api is not None:
        return None
    if case.how == "validate":
        return ["validate", str(_recipe_file(case, tmp))]
    return ["compress", str(_recipe_file(case, tmp)), "--out", str(case.out(tmp)), "--quiet", *case.flags]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_api_raises_exact_class_with_what_and_fix(case, tmp_path):
    with pytest.raises(SlimtorchError) as info:
        _call_api(case, tmp_path)
    assert type(info.value) is case.error, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert re.search(case.what, message), message
    assert re.search(case.fix, message), message


CLI_CASES = [c for c in CASES if c.api is None or c.cli is not None]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_prints_one_line_and_exits_2(case, tmp_path):
    args = _cli_args(case, tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(case.what, lines[0]) and re.search(case.fix, lines[0]), lines[0]


def test_real_process_non_finite_loss_one_line_exit_2(tmp_path):
    """The same contract from a real `python -m slimtorch.cli` process (no pytest capture in between)."""
    recipe = tmp_path / "nan.yaml"
    recipe.write_text(run(teacher="{model: 'user_code:overflowing', train: {epochs: 1}}"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "slimtorch.cli", "compress", str(recipe), "--out", str(tmp_path / "o"), "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "train teacher: loss became nan at epoch 0, step 0" in proc.stderr


def test_recipe_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\nteacher: {model: mlp}\n".encode("latin-1"))
    with pytest.raises(RecipeError, match=r"is not UTF-8 text"):
        load_recipe(path)

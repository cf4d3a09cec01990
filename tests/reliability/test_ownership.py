"""A model directory never runs code; a run never touches files it does not own.

Each test plants what a hostile or careless user could (an edited ``slimtorch.json``, a foreign
directory, an alias bomb, a second process, a full disk) and checks that slimtorch refuses with one
line, runs nothing it was not asked to run, and leaves the user's files as they were.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slimtorch import artifact
from slimtorch.cli import app
from slimtorch.errors import ArtifactError, OutputDirError, RecipeError
from slimtorch.outdir import LOCK_FILE, MARKER_FILE, claim_out_dir
from slimtorch.recipe import load_recipe
from slimtorch.run.pipeline import compress

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(HERE) not in sys.path:  # user_code / hostile_code are `module:function` targets of the recipes
    sys.path.insert(0, str(HERE))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}

RECIPE = """\
name: own
data: {source: "user_code:tiny", batch_size: 16}
teacher: {model: TEACHER, train: {epochs: EPOCHS}}
evaluate: {latency: {batch_sizes: [1], repeats: 3, warmup: 0}, noise_levels: []}
"""


def recipe(tmp: Path, teacher: str = "mlp", epochs: int = 1, extra: str = "") -> Path:
    path = tmp / "r.yaml"
    path.write_text(RECIPE.replace("TEACHER", teacher).replace("EPOCHS", str(epochs)) + extra)
    return path


def cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimtorch.cli", *args], capture_output=True, text=True, cwd=kw.pop("cwd", ROOT),
                          env=kw.pop("env", ENV), timeout=timeout, check=False, **kw)


def one_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished run of the tiny recipe (1 trained MLP teacher); copied by tests that damage it."""
    tmp = tmp_path_factory.mktemp("run")
    compress(recipe(tmp), tmp / "out")
    return tmp / "out"


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    (dst / LOCK_FILE).unlink(missing_ok=True)
    return dst


# --- 1. a model directory never runs code ------------------------------------------------------------
def _plant_os_system(model_dir: Path, marker: Path) -> None:
    spec_path = model_dir / "slimtorch.json"
    spec = json.loads(spec_path.read_text())
    spec["model"] = {"ref": "os:system", "args": {"command": f"touch {marker}"}}
    spec_path.write_text(json.dumps(spec))


def test_load_refuses_a_spec_that_names_os_system(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    _plant_os_system(run / "models" / "teacher", marker)
    with pytest.raises(ArtifactError, match=r"asks to rebuild the model with 'os:system'.*refused.*trust_code=True"):
        artifact.load(run / "models" / "teacher")
    proc = cli("measure", str(run / "models" / "teacher"), "--data", "user_code:tiny")
    assert "refused" in one_line(proc)
    assert not marker.exists()


def test_resume_rebuilds_a_tampered_step_instead_of_running_its_code(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    _plant_os_system(run / "models" / "teacher", marker)
    events: list[str] = []
    compress(recipe(tmp_path), run, resume=True, events=events.append)
    assert not marker.exists()
    assert any("damaged" in e and "running the step again" in e for e in events), events
    assert artifact.read_spec(run / "models" / "teacher")["model"]["ref"] == "mlp"


def test_user_factories_load_only_when_trusted(tmp_path):
    from slimtorch.models import build_model

    model = build_model("hostile_code:slow")
    artifact.save(model, tmp_path / "m")
    with pytest.raises(ArtifactError, match="not one of slimtorch's architectures"):
        artifact.load(tmp_path / "m")
    assert artifact.load(tmp_path / "m", trust_code=True).slimtorch_spec["ref"] == "hostile_code:slow"
    assert artifact.load(tmp_path / "m", trusted_refs={"hostile_code:slow"}) is not None
    proc = cli("measure", str(tmp_path / "m"), "--data", "user_code:tiny", "--batch-sizes", "1", "--trust-code")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("content, what", [
    (b"[1, 2]", "must hold a JSON object, got list"),
    (b"\xff\xfe{}", "not UTF-8"),
    (json.dumps({"artifact_version": 1, "format": 7}).encode(), "'format' must be a string"),
    (json.dumps({"artifact_version": 1, "format": "torch", "model": "mlp"}).encode(), "'model' must be"),
])
def test_a_malformed_spec_is_an_artifact_error(finished_run, tmp_path, content, what):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "models" / "teacher" / "slimtorch.json").write_bytes(content)
    with pytest.raises(ArtifactError, match=what):
        artifact.load(run / "models" / "teacher")


def test_a_truncated_onnx_meta_is_an_artifact_error(tmp_path):
    from slimtorch.data import build_data
    from slimtorch.export.onnx import to_ort
    from slimtorch.models import build_model

    data = build_data("digits")
    model = build_model("mlp", {"hidden": [8]}, input_shape=data.input_shape, num_classes=10)
    ort = to_ort(model, data.example_batch(2))
    artifact.save(ort, tmp_path / "m")
    meta = tmp_path / "m" / "onnx_meta.json"
    meta.write_text(meta.read_text()[:7])
    with pytest.raises(ArtifactError, match=r"onnx_meta.json is corrupted"):
        artifact.load(tmp_path / "m")


# --- 2./3. --force and --resume touch only slimtorch's own directories ---------------------------------
def test_force_refuses_a_directory_that_merely_holds_a_recipe(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "recipe.yaml").write_text("my notes")
    (out / "report.json").write_text("{}")
    before = tree(out)
    for flag in ("--force", "--resume"):
        line = one_line(cli("compress", str(recipe(tmp_path)), "--out", str(out), flag))
        assert "does not look like a slimtorch run" in line
    assert tree(out) == before


def test_resume_on_a_foreign_directory_deletes_nothing(tmp_path):
    out = tmp_path / "mine"
    (out / "deep" / "er").mkdir(parents=True)
    (out / "deep" / "er" / ".draft.abcdefgh.tmp").write_text("a temporary of my editor")
    (out / ".cache.old").mkdir()
    (out / ".cache.old" / "x").write_text("x")
    before = tree(out)
    with pytest.raises(OutputDirError, match="does not look like a slimtorch run"):
        compress(recipe(tmp_path), out, resume=True)
    assert tree(out) == before


def test_force_replaces_a_run_but_refuses_a_symlinked_out(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "stale.txt").write_text("from the run before")
    compress(recipe(tmp_path), run, force=True)
    assert not (run / "stale.txt").exists() and (run / MARKER_FILE).is_file()
    link = tmp_path / "link"
    link.symlink_to(run)
    with pytest.raises(OutputDirError, match="symbolic link"):
        compress(recipe(tmp_path), link, force=True)
    assert (run / "report.json").is_file()


# --- 4. names are single path components -----------------------------------------------------------
@pytest.mark.parametrize("field, value", [("name", ".."), ("name", "."), ("name", "../up"), ("name", ".hidden"), ("teacher_name", "../x")])
def test_names_that_would_escape_the_output_directory_are_refused(tmp_path, field, value):
    text = RECIPE.replace("TEACHER", "mlp").replace("EPOCHS", "1")
    text = text.replace("name: own", f"name: '{value}'") if field == "name" else text.replace("train: {", f"name: '{value}', train: {{")
    with pytest.raises(RecipeError, match="becomes a folder name"):
        load_recipe(text)


def test_name_dotdot_never_writes_into_the_working_directory(tmp_path):
    cwd = tmp_path / "project"
    cwd.mkdir()
    (cwd / "recipe.yaml").write_text("name: '..'\nteacher: {model: mlp}\n")
    before = tree(tmp_path)
    one_line(cli("compress", "recipe.yaml", cwd=cwd))
    assert tree(tmp_path) == before


# --- 5. YAML that would exhaust memory or the stack -------------------------------------------------
BOMB = "name: bomb\nteacher:\n  model: mlp\n  args:\n    a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    {c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, what", [
    (BOMB, r"expands to more than 100,000 values"),
    ("name: deep\nteacher: {model: mlp, args: {x: " + "[" * 20000 + "]" * 20000 + "}}\n", r"nests deeper than 64 levels"),
    ("name: big\nteacher: {model: mlp}\n" + "# padding\n" * 120_000, r"larger than 1000 kB"),
    ("name: dup\nseed: 1\nteacher: {model: mlp}\nseed: 2\n", r"line 4: key 'seed' is given twice in one block \(first on line 2\)"),
    ("name: dup\nteacher: {model: mlp, model: cnn}\n", r"key 'model' is given twice"),
])
def test_hostile_yaml_is_refused_before_it_is_built(tmp_path, text, what):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=what):
        load_recipe(path)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_yaml_merge_keys_are_not_duplicates():
    r = load_recipe("name: m\nteacher: &t {model: mlp, args: {hidden: [4]}}\nstudent: {<<: *t, args: {hidden: [2]}}\n")
    assert r.student.args == {"hidden": [2]}


# --- 6. one process per output directory ------------------------------------------------------------
def test_a_second_process_is_refused_while_a_run_holds_the_directory(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    before = tree(run)
    with claim_out_dir(run, resume=True, force=False):
        for flag in ("--resume", "--force"):
            line = one_line(cli("compress", str(recipe(tmp_path)), "--out", str(run), flag))
            assert f"is in use by another slimtorch process (pid {os.getpid()})" in line
        assert {k: v for k, v in tree(run).items() if k != LOCK_FILE} == {k: v for k, v in before.items() if k != LOCK_FILE}
    with claim_out_dir(run, resume=True, force=False):  # released on exit of the block
        pass


def test_a_killed_holder_leaves_no_stale_lock(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom slimtorch.outdir import claim_out_dir\n"
        f"with claim_out_dir({str(run)!r}, resume=True, force=False):\n    print('held', flush=True)\n    time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputDirError, match="in use by another slimtorch process"), claim_out_dir(run, resume=True, force=False):
        pass
    holder.kill()
    holder.wait()
    with claim_out_dir(run, resume=True, force=False):
        pass


# --- files ----------------------------------------------------------------------------------------
def test_report_with_wrong_field_types_is_one_line(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    report = json.loads((run / "report.json").read_text())
    report["models"][0]["params"] = "many"
    (run / "report.json").write_text(json.dumps(report))
    assert "field 'params' must be int" in one_line(cli("report", str(run)))
    report["models"][0]["params"] = 10
    report["models"][0]["latency_ms"] = {"1": {"p50": "fast"}}
    (run / "report.json").write_text(json.dumps(report))
    assert "latency_ms['1'] must map statistics to numbers" in one_line(cli("report", str(run)))


def test_measure_out_refuses_a_finished_run(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    before = tree(run)
    line = one_line(cli("measure", "mlp", "--data", "user_code:tiny", "--out", str(run)))
    assert "already exists" in line
    assert tree(run) == before


def test_resume_after_changing_only_evaluate_measures_again(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    path = recipe(tmp_path)
    path.write_text(path.read_text().replace("batch_sizes: [1]", "batch_sizes: [1, 4]"))
    events: list[str] = []
    result = compress(path, run, resume=True, events=events.append)
    assert set(result.report.to_json()["models"][0]["latency_ms"]) == {"1", "4"}
    assert any("reusing finished model" in e for e in events) and any("measuring the finished model again" in e for e in events)
    assert result.report.to_json()["recipe"]["evaluate"]["latency"]["batch_sizes"] == [1, 4]


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        compress(recipe(tmp_path), tmp_path / "out")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "report.md").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out" / "models" / "teacher").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "models" / "teacher" / "model.safetensors").stat().st_mode) == 0o644


# --- operating-system conditions ---------------------------------------------------------------------
def _no_half_written(out: Path) -> None:
    assert [p for p in out.rglob("*") if p.name.endswith(".tmp")] == []


def _compress_under_rlimit(limit: str, nbytes: int, path: Path, out: Path) -> subprocess.CompletedProcess:
    """`slimtorch compress` in a process with resource limit ``limit`` (e.g. RLIMIT_DATA) set to ``nbytes``."""
    setup = f"import resource; resource.setrlimit(resource.{limit}, ({nbytes}, {nbytes}))"
    return subprocess.run([sys.executable, "-c", f"{setup}\nfrom slimtorch.cli import app\napp()", "compress", str(path), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300, check=False)


def test_file_size_limit_is_one_line_and_resumable(tmp_path):
    """RLIMIT_FSIZE makes every write past 20 kB fail with EFBIG, as a real quota would."""
    out = tmp_path / "out"
    path = recipe(tmp_path)
    path.write_text(path.read_text().replace("model: mlp", "model: mlp, args: {hidden: [512]}"))
    proc = _compress_under_rlimit("RLIMIT_FSIZE", 20_000, path, out)
    assert "file-size limit" in one_line(proc)
    _no_half_written(out)
    assert proc.returncode == 2
    done = cli("compress", str(path), "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    assert artifact.load(out / "models" / "teacher") is not None


@pytest.mark.parametrize("options, what", [("size=64k", "the disk is full"), ("ro,size=64k", "(Read-only file system); choose a writable --out")])
def test_disk_full_and_read_only_are_one_line(tmp_path, options, what):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        path = recipe(tmp_path)
        path.write_text(path.read_text().replace("model: mlp", "model: mlp, args: {hidden: [512]}"))
        proc = cli("compress", str(path), "--out", str(mnt / "out"))
        assert what in one_line(proc)
        if (mnt / "out").exists():
            _no_half_written(mnt / "out")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_out_of_memory_while_measuring_is_one_line(tmp_path):
    path = recipe(tmp_path, teacher="hostile_code:greedy")
    path.write_text(path.read_text().replace(", train: {epochs: 1}", ""))
    assert "ran out of memory" in one_line(_compress_under_rlimit("RLIMIT_DATA", 4 * 2**30, path, tmp_path / "o"))


def test_sigterm_behaves_like_ctrl_c_and_the_run_resumes(tmp_path):
    out = tmp_path / "out"
    path = recipe(tmp_path, teacher="hostile_code:slow", epochs=100)
    proc = subprocess.Popen([sys.executable, "-m", "slimtorch.cli", "compress", str(path), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    deadline = time.time() + 120
    while not (out / "work" / "teacher" / "last" / "meta.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().startswith("error: terminated (SIGTERM)")
    assert "--resume" in stderr
    _no_half_written(out)
    done = cli("--verbose", "compress", str(path), "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    assert "resuming train teacher at epoch" in done.stderr


def test_out_of_memory_while_training_names_the_step(tmp_path):
    """A teacher whose training step cannot allocate: one line naming the step and what to change."""
    path = recipe(tmp_path, teacher="hostile_code:greedy")
    path.write_text(path.read_text().replace("hostile_code:greedy", "hostile_code:greedy, args: {train_bytes: 34359738368, eval_bytes: 0}"))
    line = one_line(_compress_under_rlimit("RLIMIT_DATA", 4 * 2**30, path, tmp_path / "o"))
    assert "training teacher ran out of memory" in line and "raise `accumulate`" in line


def test_a_run_refused_before_its_first_stage_can_be_started_again_without_force(tmp_path):
    """Bad data stops the run after it marked its directory and copied its recipe: nothing else exists, so
    the corrected recipe may start over in the same directory; a directory with any result still needs a flag."""
    out = tmp_path / "out"
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.replace('"user_code:tiny"', '"user_code:no_such_source"').replace("TEACHER", "mlp").replace("EPOCHS", "1"))
    with pytest.raises(Exception, match="no_such_source"):
        compress(bad, out)
    assert {p.name for p in out.iterdir()} <= {MARKER_FILE, LOCK_FILE, "recipe.yaml"}
    compress(recipe(tmp_path), out)  # no --force needed
    assert (out / "report.json").is_file()
    with pytest.raises(OutputDirError, match="already exists; pass --resume"):
        compress(recipe(tmp_path), out)

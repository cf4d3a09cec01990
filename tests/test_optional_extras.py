"""The lean install: without the optional packages the core imports and runs; a feature that needs one fails in one line.

Each check runs in a fresh interpreter whose import system treats the chosen packages as not installed: a
``sys.meta_path`` finder raises ModuleNotFoundError for them and ``importlib.util.find_spec`` returns None (torch
itself probes optional packages with find_spec).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slimtorch.errors import MissingExtraError
from slimtorch.optional import EXTRA_OF, import_optional, install_hint

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = sorted(set(EXTRA_OF) - {"executorch"})

BLOCKER = textwrap.dedent("""
    import importlib.abc, importlib.util, sys
    BLOCK = set(sys.argv[1].split(","))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCK:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    _find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in BLOCK else _find_spec(name, package)
    sys.argv = ["slimtorch", *sys.argv[2:]]
    from slimtorch.cli import app
    app()
""")

TINY = """
name: tiny
seed: 0
data: {source: synthetic, args: {shape: [1, 8, 8], num_classes: 4, num_samples: 64}, batch_size: 16}
teacher: {model: mlp, args: {hidden: [32]}, train: {epochs: 1}}
stages:
  - quantize: {mode: dynamic_int8, runtime: %s}
evaluate: {latency: {batch_sizes: [1], repeats: 3}}
"""


def _slimtorch_without(blocked: list[str], *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "blocked_cli.py"
    script.write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "200"}
    return subprocess.run([sys.executable, str(script), ",".join(blocked), *args], check=False, capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)


@pytest.mark.slow
def test_the_core_runs_a_recipe_with_no_optional_package_installed(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY % "torch")
    done = _slimtorch_without(OPTIONAL, "compress", "tiny.yaml", "--out", "run", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "run" / "report.json").is_file() and (tmp_path / "run" / "report.html").is_file()
    assert not (tmp_path / "run" / "pareto.png").exists()  # the plots extra is absent: tables only


@pytest.mark.slow
@pytest.mark.parametrize(("blocked", "recipe", "extra"), [
    (["sklearn"], "digits", "data"),
    (["onnx", "onnxruntime", "onnxscript"], "onnxruntime", "onnx"),
])
def test_a_feature_whose_extra_is_missing_fails_in_one_line_naming_it(tmp_path, blocked, recipe, extra):
    text = TINY % "torch" if recipe == "digits" else TINY % recipe
    if recipe == "digits":
        text = text.replace("{source: synthetic, args: {shape: [1, 8, 8], num_classes: 4, num_samples: 64}", "{source: digits")
    (tmp_path / "r.yaml").write_text(text)
    done = _slimtorch_without(blocked, "compress", "r.yaml", "--out", "run", tmp_path=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"pip install 'slimtorch[{extra}]'" in errors[0], done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_import_optional_names_the_extra_and_returns_present_modules():
    assert import_optional("json").dumps([1]) == "[1]"
    with pytest.raises(MissingExtraError, match=r"the widget needs no_such_package_xyz, .*slimtorch\[widgets\]") as info:
        import_optional("no_such_package_xyz.sub", extra="widgets", feature="the widget")
    assert "\n" not in str(info.value)
    assert install_hint("hf") == "pip install 'slimtorch[hf]'"

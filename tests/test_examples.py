"""Every example recipe validates, and runs end to end with its training cut to a minimum."""

from pathlib import Path

import pytest
import yaml

from slimtorch.data.corpora import wordnet_dir
from slimtorch.recipe import load_recipe
from slimtorch.run.pipeline import compress

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
# caps that keep each example to seconds: the recipe's shape is what is under test here
CAPS = {"epochs": 1, "finetune_epochs": 1, "iterations": 2, "repeats": 3, "warmup": 0, "max_sentences": 48,
        "num_samples": 600, "calibration_batches": 2, "max_eval_examples": 32, "max_batches": 1}


def smoke(value, key=None):
    if isinstance(value, dict):
        return {k: smoke(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [smoke(v, key) for v in value]
    if key in CAPS and isinstance(value, int) and not isinstance(value, bool):
        return min(value, CAPS[key])
    return value


def test_there_are_examples():
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates(path):
    load_recipe(path)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_end_to_end(path, tmp_path, monkeypatch):
    if path.stem.startswith("torchvision"):
        pytest.skip("torchvision examples run in tests/test_vision.py (make test-vision)")
    if path.stem.startswith("smollm2"):
        pytest.skip("the real SmolLM2 examples run in tests/test_llm_example.py (make test-llm) and docs/LLM.md")
    if "runtime: openvino" in path.read_text() or "quantizer: nncf" in path.read_text():
        for package in ("openvino", "nncf"):
            pytest.importorskip(package, reason="needs the openvino extra: pip install 'slimtorch[openvino]'")
    if "format: executorch" in path.read_text():
        pytest.importorskip("executorch", reason="needs the executorch extra: pip install 'slimtorch[executorch]'")
    if "wordnet" in path.read_text() and not (wordnet_dir() / "data.noun").is_file():
        pytest.skip("the wordnet text corpus needs the Debian package wordnet-base: apt-get install wordnet-base")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # module:function references resolve from the root
    raw = smoke(yaml.safe_load(path.read_text()))
    result = compress(raw, tmp_path / path.stem)
    report = result.report.to_json()
    assert (tmp_path / path.stem / "report.md").exists()
    assert report["final"] == report["models"][-1]["name"] or any(m["name"] == report["final"] for m in report["models"])
    assert all(s["status"] == "done" for s in report["stages"])

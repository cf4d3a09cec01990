"""Safe loading: a weights file never runs code. A recipe's `module:function` does, by design.

Every test plants a malicious pickle whose ``__reduce__`` would create a marker file, points slimtorch
at it the way a user (or an attacker who can write to a run directory) could, and checks that it is
refused with a slimtorch error and that the marker never appears.
"""

from __future__ import annotations

import ast
import builtins
import json
import pickle
from pathlib import Path

import pytest
import torch

import slimtorch
from slimtorch import artifact
from slimtorch.errors import ArtifactError, ModelRefError, RecipeError
from slimtorch.models import build_model
from slimtorch.recipe import load_recipe
from slimtorch.run.pipeline import compress

HERE = Path(__file__).resolve().parent
PACKAGE = Path(slimtorch.__file__).resolve().parent


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: the marker file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"state": {"w": _Evil(marker)}})


def test_the_payload_is_live(tmp_path):
    """Sanity check of the test itself: plain pickle.loads does run it."""
    marker = tmp_path / "ran"
    pickle.loads(evil_pickle(marker))
    assert marker.exists()


# -- static guarantees over the source --------------------------------------------------------------

def _calls(name: str):
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                dotted = ast.unparse(func)
                if dotted == name or dotted.endswith("." + name.split(".")[-1]) and name.split(".")[0] in dotted:
                    yield path.relative_to(PACKAGE.parent), node


def test_every_torch_load_is_weights_only():
    found = list(_calls("torch.load"))
    assert found, "expected the checkpoint loader's torch.load"
    for path, node in found:
        kwargs = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in kwargs and ast.literal_eval(kwargs["weights_only"]) is True, f"{path}:{node.lineno}"


@pytest.mark.parametrize("forbidden", ["pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load",
                                       "torch.jit.load", "np.load", "numpy.load", "dill.load", "joblib.load"])
def test_no_unsafe_loader_in_the_package(forbidden):
    hits = [f"{p}:{n.lineno}" for p, n in _calls(forbidden) if ast.unparse(n.func) == forbidden]
    assert hits == []


def test_no_remote_code_and_hf_weights_from_safetensors():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "trust_remote_code=True" not in text, path
        assert "allow_pickle=True" not in text, path
    hf = (PACKAGE / "models" / "hf.py").read_text()
    assert "use_safetensors=True, trust_remote_code=False" in hf


# -- malicious files ------------------------------------------------------------------------------

def test_checkpoint_optimizer_state_replaced_by_a_pickle_is_refused_on_resume(tmp_path, monkeypatch):
    """An attacker swaps a run's work/teacher/last/optim.pt; `--resume` refuses it without running it."""
    monkeypatch.syspath_prepend(str(HERE))
    recipe = {"name": "safe", "data": {"source": "user_code:tiny", "batch_size": 16},
              "teacher": {"model": "mlp", "args": {"hidden": [4]}, "train": {"epochs": 2}},
              "evaluate": {"latency": {"batch_sizes": [1], "repeats": 3, "warmup": 0}, "noise_levels": [0.1]}}
    out = tmp_path / "run"
    compress(recipe, out)
    # Make the run look interrupted during teacher training, then plant the pickle.
    state = json.loads((out / "state.json").read_text())
    state["steps"].pop("teacher")
    (out / "state.json").write_text(json.dumps(state))
    marker = tmp_path / "ran"
    (out / "work" / "teacher" / "last" / "optim.pt").write_bytes(evil_pickle(marker))
    with pytest.raises(ArtifactError, match=r"optim\.pt holds objects other than tensors, so it was refused without running it"):
        compress(recipe, out, resume=True)
    assert not marker.exists()


def test_pickle_in_place_of_safetensors_weights_is_refused(tmp_path):
    model = build_model("mlp", {"hidden": [4]}, input_shape=(8,), num_classes=3)
    artifact.save(model, tmp_path / "m")
    marker = tmp_path / "ran"
    (tmp_path / "m" / "model.safetensors").write_bytes(evil_pickle(marker))
    with pytest.raises(ArtifactError, match=r"model\.safetensors is missing or corrupted"):
        artifact.load(tmp_path / "m")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".pkl"])
def test_model_reference_to_a_pickle_file_is_refused(tmp_path, suffix):
    marker = tmp_path / "ran"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(evil_pickle(marker))
    with pytest.raises(ModelRefError, match=rf"'.*model\{suffix}' is a pickle file; slimtorch never unpickles models"):
        build_model(str(path))
    assert not marker.exists()


def _tiny_bert_dir(path: Path) -> dict:
    from transformers import BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50).save_pretrained(path)
    return json.loads((path / "config.json").read_text())


def test_hf_directory_with_pickled_weights_is_refused(tmp_path):
    marker = tmp_path / "ran"
    _tiny_bert_dir(tmp_path / "hf")
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(evil_pickle(marker))
    with pytest.raises(ModelRefError, match=r"no file named model\.safetensors.*pickled \.bin weights and repository code are never loaded"):
        build_model(f"hf:{tmp_path / 'hf'}")
    assert not marker.exists()


def test_hf_directory_with_its_own_code_is_refused_without_a_prompt(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    config = _tiny_bert_dir(tmp_path / "hf")
    config.update(model_type="evilbert", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    (tmp_path / "hf" / "evil.py").write_text(f"open({str(marker)!r}, 'w')\nfrom transformers import BertConfig as EvilConfig, BertModel as EvilModel\n")
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("transformers asked whether to run the repository's code"))
    with pytest.raises(ModelRefError, match=r"contains custom code"):
        build_model(f"hf:{tmp_path / 'hf'}")
    assert not marker.exists()


@pytest.mark.parametrize("tag", ["!!python/object/apply:builtins.open", "!!python/object/new:builtins.open"])
def test_yaml_python_tags_are_refused(tmp_path, tag):
    marker = tmp_path / "ran"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: x\nteacher: {{model: mlp}}\nseed: {tag} [{str(marker)!r}, w]\n")
    with pytest.raises(RecipeError, match=r"line 3: invalid YAML \(could not determine a constructor for the tag"):
        load_recipe(recipe)
    assert not marker.exists()


def test_user_factory_is_trusted_code_by_design(tmp_path, monkeypatch):
    """The documented opt-in for a pickled full model: the user's own `module:function` loads it."""
    (tmp_path / "mine.py").write_text(
        "import torch\n"
        "def load(path):\n"
        "    return torch.load(path, weights_only=False)  # the user decides to trust this file\n"
    )
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
    torch.save(model, tmp_path / "full.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = build_model("mine:load", {"path": str(tmp_path / "full.pt")})
    x = torch.randn(2, 8)
    torch.testing.assert_close(loaded(x), model(x))

"""Reliability III: trusted code called with untrusted arguments, sizes a saved spec asks for, names that collide.

Each test plants what an adversarial user could (an edited ``slimtorch.json`` or ``config.json``, an alias
bomb of long strings, a huge sweep grid, colliding names) and checks that slimtorch refuses it with one
line before anything runs or is allocated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slimtorch import artifact
from slimtorch.errors import ArtifactError
from slimtorch.models import build_model
from slimtorch.recipe import load_recipe
from slimtorch.run.store import trusted_calls

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(HERE) not in sys.path:  # user_code is a `module:function` target of the recipes
    sys.path.insert(0, str(HERE))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}


def cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimtorch.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env or ENV, timeout=timeout, check=False)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def edit_spec(directory: Path, **model: object) -> None:
    path = directory / "slimtorch.json"
    spec = json.loads(path.read_text())
    spec["model"] = {**spec["model"], **model}
    path.write_text(json.dumps(spec))


# -- 1. a recipe's factory is trusted with the recipe's arguments only ------------------------------------------------
def test_resume_trusts_the_recipes_call_not_its_factory_with_new_args(tmp_path, monkeypatch):
    """A loader factory (`loader:load(path)`) is trusted; an edited spec pointing it at a planted pickle is not."""
    marker = tmp_path / "pwned"
    (tmp_path / "loader.py").write_text(
        "import torch\n"
        "def load(path):\n"
        "    return torch.load(path, weights_only=False)  # the user trusts *their* file\n"
    )
    (tmp_path / "plant.py").write_text(
        "import pathlib\n"
        "class Plant:\n"
        f"    def __reduce__(self):\n        return (pathlib.Path.touch, (pathlib.Path({str(marker)!r}),))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    good = tmp_path / "good.pt"
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3)), good)
    import plant

    torch.save(plant.Plant(), tmp_path / "planted.pt")
    recipe = load_recipe({"name": "t", "data": {"source": "user_code:tiny"},
                          "teacher": {"model": "loader:load", "args": {"path": str(good)}}})
    calls = trusted_calls(recipe.to_dict())
    artifact.save(build_model("loader:load", {"path": str(good)}), tmp_path / "m")
    assert artifact.load(tmp_path / "m", trusted_refs=calls) is not None  # the recipe's own call: rebuilt

    edit_spec(tmp_path / "m", args={"path": str(tmp_path / "planted.pt")})
    with pytest.raises(ArtifactError, match=r"asks to call 'loader:load' with args .*planted\.pt.*the recipe calls it with other args"):
        artifact.load(tmp_path / "m", trusted_refs=calls)
    assert not marker.exists()


# -- 2. the size a saved spec asks for is counted on the meta device -------------------------------------------------
def test_a_builtin_spec_asking_for_huge_layers_is_refused_before_allocating(tmp_path):
    artifact.save(build_model("mlp", {"hidden": [16]}, input_shape=[8], num_classes=3), tmp_path / "m")
    edit_spec(tmp_path / "m", args={"input_shape": [8], "num_classes": 3, "hidden": [1_000_000, 1_000_000]})
    start = time.perf_counter()
    with pytest.raises(ArtifactError, match=r"asks for a model of 4e\+03 GB to build, but model\.safetensors holds 195 values"):
        artifact.load(tmp_path / "m")
    assert time.perf_counter() - start < 10  # ~4 TB was never allocated
    line = one_line(cli("measure", str(tmp_path / "m"), "--data", "user_code:tiny", "--batch-sizes", "1"))
    assert "model.safetensors holds 195" in line and "batch" not in line


def test_an_hf_spec_with_a_huge_config_is_refused_before_allocating(tmp_path):
    config = {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 32, "max_position_embeddings": 32}
    artifact.save(build_model("mlp", {"hidden": [16]}, input_shape=[8], num_classes=3), tmp_path / "m")
    edit_spec(tmp_path / "m", ref="hf:x", args={"config": {**config, "hidden_size": 8192, "intermediate_size": 28672,
                                                          "num_hidden_layers": 80, "num_attention_heads": 64}})
    with pytest.raises(ArtifactError, match=r"asks for a model of [\d,.]+ (values|GB to build), but model\.safetensors holds 195 values"):
        artifact.load(tmp_path / "m")

    # a Hugging Face directory whose config.json was enlarged, and one whose weights are damaged
    from transformers import BertConfig, BertModel

    hf_dir = tmp_path / "hf"
    BertModel(BertConfig(**{k: v for k, v in config.items() if k != "model_type"})).save_pretrained(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 8, "intermediate_size": 1_000_000}))
    with pytest.raises(ArtifactError, match=r"config\.json asks for a model of [\d,.]+ (values|GB to build), but model\.safetensors holds"):
        build_model(f"hf:{hf_dir}")
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file

    assert build_model(f"hf:{hf_dir}", {"kind": "classifier"}) is not None  # a new classifier head is expected, not missing
    whole = (hf_dir / "model.safetensors").read_bytes()
    state = load_file(str(hf_dir / "model.safetensors"))
    save_file({k: v for k, v in state.items() if ".layer.0.output." not in k}, str(hf_dir / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"lack 4 weights of the model body \(e\.g\. '[\w.]*layer\.0\.output\.[\w.]+'\)"):
        build_model(f"hf:{hf_dir}")
    (hf_dir / "model.safetensors").write_bytes(whole[:100])
    with pytest.raises(ArtifactError, match=r"model\.safetensors is missing or corrupted"):
        build_model(f"hf:{hf_dir}")


# -- 3. the YAML bound counts expanded characters, not only values ----------------------------------------------------
def test_one_long_string_aliased_many_times_is_refused(tmp_path):
    from slimtorch.errors import RecipeError

    bomb = tmp_path / "bomb.yaml"
    long = "x" * 400_000
    bomb.write_text(f"name: b\nteacher: {{model: mlp}}\nnotes: &s {long}\nextra: [{', '.join(['*s'] * 2000)}]\n")
    with pytest.raises(RecipeError, match=r"bomb\.yaml line 4: the recipe expands to more than 2 million characters"):
        load_recipe(bomb)
    line = one_line(cli("validate", str(bomb)))
    assert "expands to more than 2 million characters" in line

    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(50_000_000)  # sparse: the size is refused before any byte is read
    with pytest.raises(RecipeError, match=r"big\.yaml' is larger than 1000 kB \(50,000,000 bytes\)"):
        load_recipe(big)


# -- 5. names are unique across teachers and stages, checked before any work ------------------------------------------
@pytest.mark.parametrize("teachers, match", [
    ("{model: mlp, name: 1_distill}", r"teacher is named '1_distill', which is how a stage's output is named"),
    ("[{model: mlp, name: t}, {model: mlp, name: t}]", r"teacher\[1\] and teacher\[0\] are both named 't'"),
    ("[{model: mlp, name: teacher_2}, {model: mlp}]", r"teacher\[1\] and teacher\[0\] are both named 'teacher_2'"),
])
def test_colliding_model_names_are_refused_before_any_work(tmp_path, teachers, match):
    from slimtorch.errors import RecipeError

    path = tmp_path / "r.yaml"
    path.write_text(f"name: n\ndata: {{source: 'user_code:tiny'}}\nteacher: {teachers}\nstages:\n  - distill: {{epochs: 1}}\n")
    with pytest.raises(RecipeError, match=match):
        load_recipe(path)
    out = tmp_path / "out"
    line = one_line(cli("compress", str(path), "--out", str(out)))
    assert "named" in line and not out.exists()


# -- also: files read whole are size-checked, JSON the tool reads is bounded, damaged inputs are one line ----------
def test_damaged_inputs_are_one_line_each(tmp_path):
    from slimtorch.data.corpora import file_sentences
    from slimtorch.errors import DataError, ModelRefError, OutputDirError
    from slimtorch.models.gguf import check_gguf_file
    from slimtorch.run.resume import ResumeState

    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 20)
    with pytest.raises(DataError, match=r"latin1\.txt' is not UTF-8 text \(byte 3\); re-save it as UTF-8"):
        file_sentences(tmp_path / "latin1.txt")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(DataError, match=r"binary\.txt' is binary"):
        file_sentences(tmp_path / "binary.txt")
    (tmp_path / "short.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    with pytest.raises(ModelRefError, match=r"short\.gguf' is truncated: 9 bytes, shorter than the 24-byte header"):
        check_gguf_file(tmp_path / "short.gguf")

    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "state.json").write_text('{"steps": ' + deep + "}")
    with pytest.raises(OutputDirError, match=r"state\.json is corrupted \(JSON nested too deeply to read\); use --force"):
        ResumeState(tmp_path, resume=True)
    artifact.save(build_model("mlp", {"hidden": [4]}, input_shape=[8], num_classes=3), tmp_path / "m")
    (tmp_path / "m" / "slimtorch.json").write_text('{"model": ' + deep + "}")
    with pytest.raises(ArtifactError, match=r"slimtorch\.json is corrupted \(JSON nested too deeply to read\)"):
        artifact.load(tmp_path / "m")


def test_onnx_external_data_is_refused_before_a_session_reads_it(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from slimtorch.version import ARTIFACT_FORMAT_VERSION, __version__

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 16)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../secret.bin")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "model.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    (model_dir / "slimtorch.json").write_text(json.dumps({"artifact_version": ARTIFACT_FORMAT_VERSION, "slimtorch_version": __version__,
                                                          "format": "onnx", "model": None}))
    assert onnx.load_model_from_string((model_dir / "model.onnx").read_bytes()).graph.initializer[0].data_location == 1
    with pytest.raises(ArtifactError, match=r"tensor 'w' keeps its data in an external file '\.\./secret\.bin'.*refused"):
        artifact.load(model_dir)


def test_more_processes_than_cores_is_refused_before_any_worker_starts(tmp_path):
    from slimtorch.errors import RecipeError
    from slimtorch.run.pipeline import compress

    cores = os.cpu_count() or 1
    recipe = {"name": "p", "data": {"source": "user_code:tiny"}, "teacher": {"model": "mlp"}, "processes": cores + 1, "device": "cpu"}
    with pytest.raises(RecipeError, match=rf"processes: {cores + 1} is more than this machine's {cores} CPU cores.*at most {cores}"):
        compress(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_empty_out_of_memory_error_is_still_one_line():
    proc = cli("measure", "user_code:no_memory", "--data", "user_code:tiny", "--batch-sizes", "1")
    assert "ran out of memory (MemoryError)" in one_line(proc)


def test_saved_tensors_whose_shapes_do_not_chain_are_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    artifact.save(build_model("mlp", {"hidden": [16]}, input_shape=[8], num_classes=3), tmp_path / "m", input_shape=[8])
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    state["net.1.weight"], state["net.1.bias"] = torch.zeros(20, 8), torch.zeros(20)  # the next layer still takes 16
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ArtifactError, match=r"holds tensors whose shapes do not fit together or the spec's input_shape \[8\]"):
        artifact.load(tmp_path / "m")


def test_a_recipe_model_larger_than_free_memory_blames_the_model_not_the_batch_size(tmp_path):
    from slimtorch.errors import RecipeError
    from slimtorch.run.pipeline import compress

    recipe = {"name": "big", "data": {"source": "user_code:tiny"}, "teacher": {"model": "mlp", "args": {"hidden": [400_000, 400_000]}}}
    with pytest.raises(RecipeError, match=r"model 'mlp' needs about [\d.]+ GB for its weights, more than the [\d.]+ GB free.*smaller layers"):
        compress(recipe, tmp_path / "out")


def test_unlabeled_examples_in_a_scored_split_are_refused():
    from slimtorch.data import build_data
    from slimtorch.errors import DataError

    with pytest.raises(DataError, match=r"split 'test' has 2 examples labeled -1 \(first: item 3\); val and test are scored"):
        build_data("user_code:unlabeled_in_test")

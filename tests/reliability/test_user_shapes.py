"""User data and models in the shapes people really have.

Two catalogues. ``ACCEPTED``: shapes a mature tool accepts (dict items with a ``label``, whole-number
float labels, float64 inputs; a forward that returns a tuple, a dict with ``logits`` or a transformers
``ModelOutput``) run a real recipe to the end. ``REFUSED``: every other shape raises one
``SlimtorchError`` subclass whose message says what was found and what is expected; through the CLI
it is one ``error:`` line, exit code 2 and no traceback.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from slimtorch.cli import app
from slimtorch.core import forward, output_tensor
from slimtorch.data import build_data
from slimtorch.errors import DataError, SlimtorchError, UnsupportedModuleError
from slimtorch.run.pipeline import compress

HERE = Path(__file__).resolve().parent

RECIPE = """\
name: shapes
data: {data}
teacher: {teacher}
stages: {stages}
evaluate: {{latency: {{batch_sizes: [1], repeats: 3, warmup: 0}}, noise_levels: [0.1]}}
"""
SMALL = "{model: 'user_shapes:tensor_out', train: {epochs: 3, lr: 0.01}}"


@pytest.fixture(autouse=True)
def _user_code_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def recipe(tmp: Path, data: str = "{source: 'user_shapes:dict_items'}", teacher: str = SMALL, stages: str = "[]") -> Path:
    path = tmp / "shapes.yaml"
    path.write_text(RECIPE.format(data=data, teacher=teacher, stages=stages))
    return path


# -- accepted shapes ---------------------------------------------------------------------------------

ACCEPTED_DATA = ["dict_items", "float_labels", "float64_inputs", "array_pairs"]


@pytest.mark.parametrize("source", ACCEPTED_DATA)
def test_accepted_data_shapes_train_and_measure(source, tmp_path):
    """The teacher trains on them and the report's accuracy is well above chance (1/3)."""
    data = build_data(f"user_shapes:{source}", batch_size=16)
    x, y = next(iter(data.loader("test")))
    assert x.dtype == torch.float32 and y.dtype == torch.long and x.shape == (16, 8)
    result = compress(recipe(tmp_path, data=f"{{source: 'user_shapes:{source}', batch_size: 16}}"), tmp_path / "out")
    assert result.report.to_json()["models"][0]["metrics"]["accuracy"] > 0.6


@pytest.mark.parametrize("kind", ["tuple_out", "dict_out", "model_output_out"])
def test_forward_output_kinds_reduce_to_the_logits(kind):
    """A tuple's first element, a dict's or ModelOutput's 'logits': the same tensor as the plain model's."""
    import user_shapes

    torch.manual_seed(0)
    plain = user_shapes.tensor_out()
    other = getattr(user_shapes, kind)()
    other.load_state_dict(plain.state_dict())
    x = torch.randn(5, 8)
    assert torch.equal(forward(other, x), plain(x))


@pytest.mark.parametrize("kind", ["tuple_out", "dict_out", "model_output_out"])
def test_forward_output_kinds_run_a_whole_recipe(kind, tmp_path):
    """Train, distill, remove neurons, and quantize to onnxruntime a model whose forward is not a Tensor."""
    stages = ("[{distill: {epochs: 1}}, {prune: {sparsity: 0.5, granularity: neuron}}, "
              "{quantize: {mode: dynamic_int8, runtime: onnxruntime}}]")
    teacher = f"{{model: 'user_shapes:{kind}', train: {{epochs: 3, lr: 0.01}}}}"
    result = compress(recipe(tmp_path, teacher=teacher, stages=stages), tmp_path / "out")
    models = {m["name"]: m for m in result.report.to_json()["models"]}
    assert models["teacher"]["metrics"]["accuracy"] > 0.6
    assert models["3_quantize"]["runtime"] == "onnxruntime" and models["3_quantize"]["agreement"] > 0.8
    assert models["2_prune"]["params"] < models["teacher"]["params"]


def test_custom_layer_torch_pruning_does_not_know_is_left_whole(tmp_path):
    """The layers coupled to a custom matmul layer keep their channels (named in the stage's skipped
    list with the layer's type); the rest is pruned and the model still runs."""
    stages = "[{prune: {sparsity: 0.5, granularity: neuron}}]"
    teacher = "{model: 'user_shapes:custom_layer', train: {epochs: 2, lr: 0.01}}"
    result = compress(recipe(tmp_path, teacher=teacher, stages=stages), tmp_path / "out")
    row = next(s for s in result.report.to_json()["stages"] if s["name"] == "prune")
    skipped = {s["fqn"]: s["reason"] for s in row["details"]["skipped"]}
    assert re.search(r"parameter 'mix\.mix' \(16, 16\) of Mix, a layer Torch-Pruning has no rule for", skipped["a"])
    assert row["details"]["channels"] == {"a": [16, 16], "b": [16, 8]}
    assert row["status"] == "done"
    assert result.report.to_json()["models"][-1]["metrics"]["accuracy"] > 0.4


# -- refused shapes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """One shape that is refused: the recipe's data source (or teacher), the error and two regexes."""

    id: str
    error: type[SlimtorchError]
    what: str  # what was found
    fix: str  # what is expected
    data: str = "{source: 'user_shapes:dict_items'}"
    teacher: str = SMALL


def data(fn: str) -> str:
    return f"{{source: 'user_shapes:{fn}'}}"


REFUSED = [
    Shape("split-is-none", DataError, r"returned None for the 'val' split", r"must be a torch Dataset of \(x, y\) pairs", data("none_split")),
    Shape("split-is-a-raw-tensor", DataError, r"returned a torch\.float32 Tensor of shape \(96, 8\) for the 'train' split, not a Dataset",
          r"TensorDataset\(x, y\)", data("raw_tensor_split")),
    Shape("split-is-a-pair-of-unequal-length", DataError, r"returned a tuple of 2 elements of lengths 96 and 90 for the 'train' split",
          r"\(inputs, labels\) pair of equal length", data("unequal_pair_split")),
    Shape("string-label-arrays", DataError, r"'train' split: labels are a numpy array of dtype <U3 \(e\.g\. 'cat'\)",
          r"map class names to indices 0\.\.C-1", data("string_label_arrays")),
    Shape("split-is-iterable-only", DataError, r"returned a Stream for the 'train' split", r"map-style Dataset with len\(\) and __getitem__",
          data("iterable_split")),
    Shape("items-are-inputs-only", DataError, r"item 0 of the 'train' split is a torch\.float32 Tensor of shape \(8,\)",
          r"expects each item to be an \(x, y\) pair", data("inputs_only")),
    Shape("dict-items-without-label", DataError, r"item 0 of the 'train' split is a dict with keys \['image', 'target'\]",
          r"a dict with a 'label' entry", data("dict_items_no_label")),
    Shape("string-labels", DataError, r"item 0 of the 'train' split has label a str 'cat'", r"map class names to indices 0\.\.C-1",
          data("string_labels")),
    Shape("fractional-labels", DataError, r"'train' split: label 0\.5 is a fraction", r"whole class indices 0\.\.C-1",
          data("fractional_labels")),
    Shape("one-hot-labels", DataError, r"labels are a Tensor of shape \(96, 3\) \(one-hot", r"y\.argmax\(1\)", data("one_hot_labels")),
    Shape("examples-of-different-shapes", DataError, r"item 0 of 'train' has input shape \(8,\) but item 5 has \(7,\)",
          r"Pad or crop them, or return a 'collate_fn'", data("ragged_inputs")),
    Shape("splits-of-different-shapes", DataError, r"item 0 of 'train' has input shape \(8,\) but item 0 of 'val' has \(6,\)",
          r"every input must have the same shape", data("val_other_shape")),
    Shape("user-source-unknown-arg", DataError, r"'user_shapes:takes_size' cannot take data\.args \['sise'\]", r"its parameters: size\.",
          "{source: 'user_shapes:takes_size', args: {sise: 3}}"),
    Shape("labels-outside-the-models-classes", DataError, r"two_classes outputs 2 classes \(output shape \(\d+, 2\)\) but the labels go up to 2",
          r"build the model with num_classes=3", teacher="{model: 'user_shapes:two_classes'}"),
    # refused before training starts (it used to be an IndexError traceback from inside the loss)
    Shape("labels-outside-the-classes-of-a-teacher-to-train", DataError, r"two_classes outputs 2 classes .* labels go up to 2",
          r"build the model with num_classes=3", teacher="{model: 'user_shapes:two_classes', train: {epochs: 1}}"),
    Shape("forward-returns-dict-without-logits", UnsupportedModuleError, r"Net\.forward returned a dict with keys \['scores'\] and no 'logits'",
          r"put it under 'logits'", teacher="{model: 'user_shapes:dict_without_logits'}"),
]


def test_refused_catalogue_is_unique():
    assert len({s.id for s in REFUSED}) == len(REFUSED) >= 12


@pytest.mark.parametrize("shape", REFUSED, ids=lambda s: s.id)
def test_refused_shape_raises_exact_class_saying_found_and_expected(shape, tmp_path):
    with pytest.raises(SlimtorchError) as info:
        compress(recipe(tmp_path, data=shape.data, teacher=shape.teacher), tmp_path / "out")
    assert type(info.value) is shape.error, f"{type(info.value).__name__}: {info.value}"
    assert re.search(shape.what, str(info.value)) and re.search(shape.fix, str(info.value)), str(info.value)


@pytest.mark.parametrize("shape", REFUSED, ids=lambda s: s.id)
def test_refused_shape_cli_one_line_exit_2(shape, tmp_path):
    path = recipe(tmp_path, data=shape.data, teacher=shape.teacher)
    result = CliRunner().invoke(app, ["compress", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(shape.what, lines[0]) and re.search(shape.fix, lines[0]), lines[0]


def test_output_rule_for_every_container():
    """The documented rule, on the containers themselves: Tensor as is, mapping['logits'], tuple[0]."""
    t = torch.ones(2, 3)
    assert output_tensor([({"logits": t},)]) is t
    for bad, found in [({"a": t}, r"a dict with keys \['a'\] and no 'logits'"), ((), r"an empty tuple"), (None, r"NoneType None")]:
        with pytest.raises(UnsupportedModuleError, match=found):
            output_tensor(bad)


def test_measure_cli_refuses_labels_outside_the_models_classes(tmp_path):
    """`slimtorch measure` on a 2-class model with 3-class data: one line, not a silently low accuracy."""
    result = CliRunner().invoke(app, ["measure", "user_shapes:two_classes", "--data", "user_shapes:dict_items",
                                      "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert re.search(r"outputs 2 classes .* labels go up to 2", result.stderr), result.stderr
    assert not (tmp_path / "m" / "report.json").exists() or "accuracy" not in json.loads((tmp_path / "m" / "report.json").read_text())

"""Recipe values validated up front, and structured pruning that cannot prune saying so.

``VALUES``: each recipe is refused by ``slimtorch validate`` (before any data or model is built) with
a ``RecipeError`` naming the line, the value and the fix; through the CLI it is one ``error:`` line,
exit code 2, no traceback. Orders that do work are accepted. The structured-pruning tests run the
prune stage on a real MLP and check the stage's status, notes and per-layer reasons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from slimtorch.cli import app
from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.errors import RecipeError
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.recipe import load_recipe

# Lines: 1 name, 2 seed, 3 data, 4 teacher, 5 stages:, 6.. stage entries (the list starts on 6), then evaluate.
BASE = """\
name: values
seed: {seed}
data: {data}
teacher: {{model: mlp, args: {{hidden: [8]}}}}
stages:
{stages}
evaluate: {evaluate}
"""
EVALUATE = "{latency: {batch_sizes: [1], repeats: 3, warmup: 0}, noise_levels: [0.1]}"


def recipe(seed: str = "0", data: str = "{source: digits}", stages: tuple[str, ...] = ("prune: {sparsity: 0.5}",),
           evaluate: str = EVALUATE, extra: str = "") -> str:
    return BASE.format(seed=seed, data=data, stages="\n".join(f"  - {s}" for s in stages), evaluate=evaluate) + extra


ORT = "quantize: {mode: dynamic_int8, runtime: onnxruntime}"


@dataclass(frozen=True)
class Value:
    id: str
    text: str
    what: str  # the line and the value found
    fix: str  # what to do


VALUES = [
    Value("negative-seed", recipe(seed="-1"), r"line 2: seed: seed must be a whole number in \[0, 2\*\*32\); got -1", r"e\.g\. 0"),
    Value("seed-too-large", recipe(seed=str(2**40)), r"line 2: seed: .*got 1099511627776", r"Any value in range works"),
    Value("latency-batch-size-zero", recipe(evaluate="{latency: {batch_sizes: [0, 64]}}"),
          r"line \d+: evaluate\.latency\.batch_sizes: .*must be positive whole numbers .*got \[0, 64\]", r"Try \[1, 64\]"),
    Value("negative-noise-level", recipe(evaluate="{noise_levels: [-0.1]}"),
          r"evaluate\.noise_levels: .*each must be >= 0; got \[-0\.1\]", r"units of the input's std"),
    Value("unknown-data-arg-of-builtin-source", recipe(data="{source: mnist1d, args: {num_sample: 500}}"),
          r"line 3: data\.args: unknown data\.args key 'num_sample' for data source 'mnist1d'", r"Did you mean 'num_samples'\? Valid keys: num_samples"),
    Value("data-arg-for-a-source-without-args", recipe(data="{source: digits, args: {size: 3}}"),
          r"unknown data\.args key 'size' for data source 'digits'", r"Valid keys: none"),
    Value("unknown-builtin-data-source", recipe(data="{source: mnist1D}"),
          r"line 3: data\.source: unknown data source 'mnist1D'", r"Did you mean 'mnist1d'\?"),
    Value("layers-include-empty", recipe(stages=("prune: {sparsity: 0.5, layers: {include: []}}",)),
          r"line 6: stages\[0\]\.prune\.layers\.include: prune\.layers\.include is an empty list, so no layer would be pruned",
          r"leave include out to consider every layer"),
    Value("prune-after-onnxruntime-quantize", recipe(stages=(ORT, "prune: {sparsity: 0.5}")),
          r"line 6: stages: stages\[1\] prune cannot run after stages\[0\] quantize \(mode dynamic_int8, runtime onnxruntime\)",
          r"onnxruntime graph .* Put prune before quantize"),
    Value("distill-after-export", recipe(stages=("export: {}", "distill: {epochs: 1}")),
          r"stages\[1\] distill cannot run after stages\[0\] export, which turns the model into an onnxruntime graph",
          r"Put distill before export"),
    Value("finetune-after-export-with-a-stage-between", recipe(stages=("export: {}", "prune: {sparsity: 0.5}", "finetune: {epochs: 1}")),
          r"stages\[1\] prune cannot run after stages\[0\] export", r"quantize and export go last"),
    Value("lora-after-torch-int8", recipe(stages=("quantize: {mode: dynamic_int8, runtime: torch}", "lora: {rank: 2, epochs: 1}")),
          r"stages\[1\] lora cannot run after stages\[0\] quantize \(mode dynamic_int8, runtime torch\), which replaces its layers with int8",
          r"Put lora before quantize"),
    Value("quantize-twice-to-onnxruntime", recipe(stages=(ORT, "quantize: {mode: fp16, runtime: onnxruntime}")),
          r"stages\[1\] quantize cannot run after stages\[0\] quantize", r"no torch layers left"),
    Value("export-after-bf16", recipe(stages=("quantize: {mode: bf16, runtime: torch}", "export: {}")),
          r"stages\[1\] export cannot run after stages\[0\] quantize \(mode bf16, runtime torch\), which leaves bfloat16 weights",
          r"use quantize \{mode: fp16, runtime: onnxruntime\} instead of bf16"),
    Value("target-with-a-quantize-stage", recipe(stages=("finetune: {epochs: 1}", ORT), extra="target: {speedup: 2}\n"),
          r"with `target:` the stages are the recovery run after the planned pruning", r"remove the quantize stage"),
]


def test_values_catalogue_is_unique():
    assert len({v.id for v in VALUES}) == len(VALUES) >= 12


@pytest.mark.parametrize("value", VALUES, ids=lambda v: v.id)
def test_bad_value_is_a_recipe_error_naming_line_value_and_fix(value, tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(value.text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert re.search(value.what, message) and re.search(value.fix, message), message


@pytest.mark.parametrize("value", VALUES, ids=lambda v: v.id)
def test_bad_value_cli_one_line_exit_2(value, tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(value.text)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(value.what, lines[0]) and re.search(value.fix, lines[0]), lines[0]


@pytest.mark.parametrize("stages", [
    ("prune: {sparsity: 0.5}", "finetune: {epochs: 1}", ORT),
    ("quantize: {mode: bf16, runtime: torch}", "finetune: {epochs: 1}"),
    ("distill: {epochs: 1}", "export: {}"),
], ids=["torch-stages-then-onnxruntime", "bf16-then-training", "export-last"])
def test_orders_that_work_are_accepted(stages):
    assert [s.kind for s in load_recipe(recipe(stages=stages)).stages] == [s.split(":")[0] for s in stages]


def test_unknown_data_arg_is_refused_by_build_data_too():
    """The Python API path (no recipe) gives the same message."""
    with pytest.raises(RecipeError, match=r"unknown data\.args key 'num_sample' for data source 'mnist1d'\. Did you mean 'num_samples'\?"):
        build_data("mnist1d", args={"num_sample": 500})


# -- structured pruning that cannot prune ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data():
    return build_data("digits", batch_size=32)


def prune_mlp(data, tmp: Path, **config):
    """Prune a 64-8-6-10 MLP's neurons; returns (model, record)."""
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [8, 6]}, input_shape=data.input_shape, num_classes=10)
    ctx = RunContext(data=data, work_dir=tmp)
    return PruneStage(PruneConfig(granularity="neuron", **config)).apply(model, ctx)


def reasons(record) -> dict[str, str]:
    return {s["fqn"]: s["reason"] for s in record.details["skipped"]}


def test_round_to_wider_than_the_layer_says_nothing_was_pruned(tiny_data, tmp_path):
    model, record = prune_mlp(tiny_data, tmp_path, sparsity=0.5, round_to=16)
    assert record.status == "nothing pruned"
    assert record.details["channels"] == {"net.1": [8, 8], "net.3": [6, 6]}
    assert reasons(record)["net.1"] == "round_to 16 is wider than the layer (8 channels), so no multiple of it fits; lower round_to to at most 8"
    assert reasons(record)["net.3"].startswith("round_to 16 is wider than the layer (6 channels)")
    assert any(n.startswith("no channel was removed, so the model is unchanged (net.1: round_to 16") for n in record.notes)
    assert not any("coupled" in r for r in reasons(record).values())  # never the hidden, wrong reason
    assert record.details["params_after"] == record.details["params_before"] and model(tiny_data.example_batch(2)).shape == (2, 10)


def test_sparsity_that_rounds_to_no_multiple_of_round_to(tiny_data, tmp_path):
    """8 channels at 0.5 keep 4, and 4 rounded down to a multiple of 8 is 0: net.1 is left whole, and says why."""
    _, record = prune_mlp(tiny_data, tmp_path, sparsity=0.5, round_to=8)
    assert reasons(record)["net.1"] == ("sparsity 0.5 keeps 4 of 8 channels, which rounds down to 0 as a multiple of round_to 8; "
                                        "lower round_to to at most 4 or lower the sparsity")
    assert record.status == "nothing pruned"


def test_round_to_that_removes_more_than_asked_says_so(tiny_data, tmp_path):
    model, record = prune_mlp(tiny_data, tmp_path, sparsity=0.1, round_to=4)
    assert record.status == "done"
    assert record.details["channels"] == {"net.1": [8, 4], "net.3": [6, 4]}
    assert "net.1: removed 4 of 8 channels (50%), not 10%: round_to 4 keeps a multiple of 4 channels." in record.notes
    assert model(tiny_data.example_batch(3)).shape == (3, 10)


def test_why_unchanged_names_rounding_to_zero_and_single_channels():
    from slimtorch.prune.structured import COUPLED, why_unchanged

    assert why_unchanged(8, 1e-17, None, "layer") == "sparsity 1e-17 of 8 channels rounds to 0 channels; raise it to at least 0.125"
    assert why_unchanged(1, 0.5, None, "layer") == "it has a single output channel, which is never removed"
    assert why_unchanged(8, 0.5, None, "global") == "global scope ranked all of its channels above the cut"
    assert why_unchanged(8, 0.5, None, "layer") == COUPLED

"""`processes: N` in a recipe: the run relaunches itself on N local workers (as torchrun would) and the
caller gets the workers' report and final model; refusals come back as the same one-line errors."""

from __future__ import annotations

import pytest

import slimtorch
from slimtorch.errors import OutputDirError, RecipeError
from slimtorch.recipe import load_recipe

RECIPE = """\
name: two-processes
seed: 0
processes: 2
data: {source: digits, batch_size: 64}
teacher: {model: mlp, args: {hidden: [64]}, train: {epochs: 3}}
student: {model: mlp, args: {hidden: [32]}}
stages:
  - distill: {temperature: 2.0, alpha: 0.5, epochs: 3, lr: 0.003}
evaluate: {latency: {batch_sizes: [1], repeats: 3, warmup: 1}, noise_levels: []}
"""


@pytest.mark.slow
def test_a_recipe_with_two_processes_trains_data_parallel_and_returns_the_report(tmp_path):
    result = slimtorch.compress(RECIPE, tmp_path / "out")
    assert result.report is not None and result.report.extra["training"]["processes"] == 2
    assert [m.name for m in result.report.models] == ["teacher", "1_distill"]
    assert result.report.final_model.metrics["accuracy"] > 0.8
    assert sum(p.numel() for p in result.model.parameters()) == 64 * 32 + 32 + 32 * 10 + 10  # the student, from disk


@pytest.mark.slow
def test_the_workers_refusal_reaches_the_caller_as_one_line(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("not a slimtorch run")
    with pytest.raises(OutputDirError, match="it does not look like a slimtorch run") as exc:
        slimtorch.compress(RECIPE, tmp_path / "out", force=True)
    assert "\n" not in str(exc.value)
    assert (tmp_path / "out" / "notes.txt").read_text() == "not a slimtorch run"


def test_processes_must_be_a_positive_count():
    with pytest.raises(RecipeError, match="processes"):
        load_recipe(RECIPE.replace("processes: 2", "processes: 0"))

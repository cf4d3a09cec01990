"""The MiniLM pipeline recipe (examples/minilm.yaml), cut down, end to end on the real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

import slimtorch
from slimtorch.data import build_data
from slimtorch.data.corpora import wordnet_dir
from slimtorch.errors import DataError

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "minilm.yaml"


def test_text_padding_max_length_gives_fixed_shape_batches():
    data = build_data("text", args={"max_sentences": 40, "max_length": 128, "padding": "max_length"}, batch_size=8)
    batch = data.example_batch(8)
    assert tuple(batch["input_ids"].shape) == (8, 128)
    assert tuple(batch["attention_mask"].shape) == (8, 128)
    assert 0 < int(batch["attention_mask"].sum()) < 8 * 128  # real tokens, then padding
    longest = build_data("text", args={"max_sentences": 40, "max_length": 128}, batch_size=8).example_batch(8)
    assert longest["input_ids"].shape[1] < 128


def test_text_padding_rejects_unknown_mode():
    with pytest.raises(DataError, match="padding must be 'longest' or 'max_length'; got 'max'"):
        build_data("text", args={"max_sentences": 40, "padding": "max"})


@pytest.mark.slow
def test_minilm_recipe_cut_down_runs_end_to_end(tmp_path):
    if not (wordnet_dir() / "data.noun").is_file():
        pytest.skip("the recipe's wordnet corpus needs the Debian package wordnet-base: apt-get install wordnet-base")
    recipe = yaml.safe_load(RECIPE.read_text())
    assert [next(iter(s)) for s in recipe["stages"]] == ["prune", "distill", "quantize"]
    recipe["data"]["args"].update(max_sentences=48, max_length=32)
    recipe["data"]["batch_size"] = 16
    recipe["stages"][1]["distill"].update(max_steps=2)
    recipe["evaluate"] = {"latency": {"batch_sizes": [8], "warmup": 1, "repeats": 3, "threads": 1},
                          "noise_levels": [], "max_eval_examples": 16}

    result = slimtorch.compress(recipe, out=tmp_path / "run")

    report = result.report.to_json()
    names = [m["name"] for m in report["models"]]
    assert names == ["teacher", "1_prune", "2_distill", "3_quantize"]
    assert report["baseline"] == "teacher" and report["final"] == "3_quantize"
    by_name = {m["name"]: m for m in report["models"]}
    assert by_name["3_quantize"]["runtime"] == "onnxruntime"
    assert by_name["1_prune"]["params"] < by_name["teacher"]["params"]  # one of six layers removed
    assert by_name["3_quantize"]["size_bytes"] < 0.35 * by_name["teacher"]["size_bytes"]
    for name in names:
        cosine = by_name[name]["metrics"]["cosine"]
        p50 = by_name[name]["latency_ms"]["8"]["p50"]
        assert cosine is not None and -1.0 <= cosine <= 1.0 + 1e-6, (name, cosine)
        assert math.isfinite(p50) and p50 > 0, (name, p50)
    assert by_name["teacher"]["metrics"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert by_name["1_prune"]["metrics"]["cosine"] > 0.8  # one layer dropped: close to the original, not equal
    assert by_name["3_quantize"]["metrics"]["cosine"] > 0.8
    prune_row = next(r for r in report["stages"] if r.get("model") == "1_prune")
    assert prune_row["details"]["layers_after"] == 5 and len(prune_row["details"]["dropped_layers"]) == 1
    assert (tmp_path / "run" / "report.json").is_file() and (tmp_path / "run" / "models" / "3_quantize").is_dir()


@pytest.mark.parametrize("granularity", ["head", "ffn", "layer"])
def test_planner_target_accepts_transformer_granularities(granularity):
    from slimtorch.plan import TargetConfig

    target = TargetConfig(speedup=3, batch=8, granularity=granularity, sparsities=[0.0, 0.25], quantize=["dynamic_int8"])
    assert target.granularity == granularity and target.kind == "speedup"

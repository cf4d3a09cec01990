"""A size target for llama.cpp: the planner trades dropped layers against bits per weight, each candidate a real GGUF file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.errors import RecipeError
from slimtorch.plan import TargetConfig, plan
from tests.tiny_llm import load_tiny_gguf, write_text

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan_gguf")
    model = load_tiny_gguf(root, hidden=256, ffn=512, heads=4, kv_heads=2)  # 2 layers; its cheapest GGUF types need ~0.74 MB
    data = build_data("text", args={"path": str(write_text(root / "text.txt", repeat=3))})
    return model, data, root


def _plan(tiny, size_mb, **kwargs):
    model, data, root = tiny
    ctx = RunContext(data=data, work_dir=root / f"w{size_mb}", teacher=model)
    return plan(model, ctx, TargetConfig(size_mb=size_mb, runtime="llama.cpp", sparsities=[0.0, 0.5], **kwargs))


def test_a_size_only_layer_dropping_reaches_is_met_by_dropping_layers_and_the_plan_says_why(tiny):
    chosen = _plan(tiny, 0.5)
    assert chosen.is_feasible and chosen.prune is not None and chosen.prune.sparsity == 0.5
    assert chosen.prune.granularity == "layer" and chosen.prune.criterion == "activation"  # block influence by default
    assert chosen.export is not None and chosen.export.format == "gguf" and chosen.export.size_mb == 0.5
    [row] = chosen.candidates  # the unpruned model cannot fit: its cheapest types need more than the budget
    assert row.chosen and row.size_bytes <= 0.5e6 and row.latency_ms is None and 0 < row.val_metric_before_recovery
    assert "Not written, sparsity 0.0: the size target allows" in chosen.message
    stages = [s.kind for s in chosen.stages([])]
    assert stages == ["prune", "export"]


def test_where_both_fit_the_candidate_with_the_better_perplexity_wins(tiny):
    chosen = _plan(tiny, 1.2)
    assert [c.sparsity for c in chosen.candidates] == [0.0, 0.5] and all(c.meets_budget for c in chosen.candidates)
    best = max(chosen.candidates, key=lambda c: c.val_metric_before_recovery)
    assert best.chosen and chosen.message.startswith("budget size_mb≤1.2 MB in llama.cpp")
    # dropping one of two layers costs more than the bits it frees buy back
    assert best.sparsity == 0.0 and chosen.prune is None
    # the plan reads back as the pipeline stores it
    assert type(chosen).from_json(json.loads(json.dumps(chosen.to_json()))) == chosen


def test_a_size_no_candidate_reaches_is_an_error_that_names_each_candidates_need(tiny):
    with pytest.raises(RecipeError, match=r"cannot hold any candidate's GGUF file: sparsity 0.0: .*cheapest types need .* "
                                          r"sparsity 0.5: .* Raise size_mb"):
        _plan(tiny, 0.2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"latency_ms": 5}, "give size_mb instead of latency_ms"),
     ({"size_mb": 1, "quantize": ["dynamic_int8"]}, "remove target.quantize"),
     ({"size_mb": 1, "min_accuracy": 0.9}, "ranks its candidates by perplexity"),
     ({"size_mb": 1, "granularity": "channel"}, "granularity 'channel' is for other models"),
     ({"size_mb": 1, "export_args": {"size_mb": 2}}, "size_mb come"),
     ({"size_mb": 1, "export_args": {"method": "awq"}}, "does not make a valid GGUF export: method"),
     ({"size_mb": 1, "runtime": "onnxruntime", "export_args": {"method": "gptq"}}, "add runtime: llama.cpp")],
)
def test_bad_llamacpp_targets(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        TargetConfig(**{"runtime": "llama.cpp", **kwargs})


def test_defaults_for_llamacpp_drop_layers_in_small_fractions():
    target = TargetConfig(size_mb=90, runtime="llama.cpp")
    assert target.search_sparsities == [0.0, 0.1, 0.2, 0.3] and target.search_granularity == "layer"
    assert TargetConfig(size_mb=90).search_granularity == "filter"  # other runtimes keep theirs


def test_the_cli_plans_a_gguf_file_of_the_target_size_and_reports_it(tiny, tmp_path):
    _, _, root = tiny
    recipe = {"name": "gguf_target", "data": {"source": "text", "args": {"path": str(root / "text.txt")}, "batch_size": 4},
              "teacher": {"model": f"gguf:{root / 'tiny.gguf'}"},
              "target": {"size_mb": 0.5, "runtime": "llama.cpp", "sparsities": [0.0, 0.5]},
              "evaluate": {"latency": {"batch_sizes": [1], "warmup": 1, "repeats": 3},
                           "llm": {"window": 32, "stride": 16, "max_tokens": 64, "prefill_tokens": 16, "decode_tokens": 3,
                                   "decode_repeats": 1, "decode_batch_sizes": [1], "sample_tokens": 4}}}
    path = tmp_path / "target.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {"SLIMTORCH_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "slimtorch.cli", "compress", str(path), "--out", str(tmp_path / "run")],
                          check=False, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["plan"]["is_feasible"] and report["plan"]["prune"]["sparsity"] == 0.5
    assert [s["name"] for s in report["stages"]][-2:] == ["prune", "export"]
    final = report["models"][-1]
    assert final["size_bytes"] <= 0.5e6 and not any("target size_mb" in w for w in report["warnings"])
    # too small for any candidate: exit code 2 and the reason, no traceback
    path.write_text(yaml.safe_dump({**recipe, "target": {**recipe["target"], "size_mb": 0.2}}))
    refused = subprocess.run([sys.executable, "-m", "slimtorch.cli", "compress", str(path), "--out", str(tmp_path / "bad")],
                             check=False, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert refused.returncode == 2 and "cannot hold any candidate's GGUF file" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr


def test_a_llamacpp_target_for_a_model_that_is_no_causal_lm_says_what_to_use(tmp_path):
    import torch

    from slimtorch.errors import UnsupportedModuleError

    data = build_data("digits")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    ctx = RunContext(data=data, work_dir=tmp_path, teacher=model)
    with pytest.raises(UnsupportedModuleError, match="plans a GGUF file of a causal LM; got a Sequential. Use runtime: onnxruntime"):
        plan(model, ctx, TargetConfig(size_mb=1, runtime="llama.cpp"))

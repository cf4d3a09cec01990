"""Architecture families x stages: every cell works (plausible figures, the artifact reloads to the same
outputs, in this process and in a fresh one) or is refused with one line that names the reason.

The table :data:`EXPECTED` is what docs/ARCHITECTURES.md reports; change both together.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn import functional as F

from slimtorch import artifact
from slimtorch.core import RunContext, forward
from slimtorch.data import build_data
from slimtorch.distill import DistillConfig, DistillStage
from slimtorch.errors import SlimtorchError
from slimtorch.export import ExportConfig, ExportStage
from slimtorch.measure.macs import count_macs
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from tests.architectures.zoo import EOS, VOCAB

ZOO = "tests.architectures.zoo:build"
ROOT = Path(__file__).resolve().parents[2]

_TEXT = {"vocab_size": VOCAB, "num_labels": 2, "pad_token_id": 0}
HF_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert": ("classifier", {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "intermediate_size": 64, **_TEXT}),
    "gpt2": ("classifier", {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32, **_TEXT}),
    "llama": ("causal_lm", {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32, "vocab_size": VOCAB}),
    "phi": ("classifier", {"model_type": "phi", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "max_position_embeddings": 32, **_TEXT}),
    "t5": ("classifier", {"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 2, "num_heads": 4,
                          "decoder_start_token_id": 0, "eos_token_id": EOS, **_TEXT}),
}
# family -> data kind of tests.architectures.zoo:data
FAMILIES = {"convnet": "image", "depthwise": "image", "conv_classifier": "image", "vit": "image", "mha": "sequence",
            "transformer_encoder": "sequence", "lstm": "sequence", "gru": "sequence", "two_inputs": "two_inputs",
            **{f: "tokens" for f in HF_CONFIGS}}

WORKS = "works"
_HEADS = "needs a Hugging Face transformer"
_HF_FILTER = r"on Hugging Face \w+: removing channels would leave its config .* use head, ffn or layer"
_RNN = r"nothing in this model can be pruned .*(LSTM|GRU) \(rnn\) has no pruning rule"
_VIT = r"head/ffn/layer pruning supports BERT-like, GPT-2 and LLaMA-like layouts; ViTForImageClassification"
_VIT_FILTER = r"on Hugging Face ViTForImageClassification: .* Use a mask granularity"
_T5 = r"head/ffn/layer pruning supports .* T5ForSequenceClassification"
_T5_FILTER = r"on Hugging Face T5ForSequenceClassification: .* Use a mask granularity"
STAGES = ("prune_filter", "prune_weight", "prune_head", "prune_layer", "export_onnx", "ort_dynamic_int8", "ort_static_int8",
          "torch_int8_weight_only", "distill")
# Cells that fail today for a reason outside this matrix's reach; strict, so a fix turns them red until removed here.
KNOWN_BUGS: dict[tuple[str, str], str] = {}  # (family, stage): reason, run as strict xfails until fixed
_NO_LINEAR = r"quantizes nn.Linear weights, and \w+ has no Linear layer it can quantize"
EXPECTED: dict[str, dict[str, str]] = {
    "convnet": {"prune_head": _HEADS, "prune_layer": _HEADS},
    "depthwise": {"prune_head": _HEADS, "prune_layer": _HEADS},
    "conv_classifier": {"prune_head": _HEADS, "prune_layer": _HEADS, "torch_int8_weight_only": _NO_LINEAR},
    "mha": {"prune_head": _HEADS, "prune_layer": _HEADS},
    "transformer_encoder": {"prune_head": _HEADS, "prune_layer": _HEADS},
    "lstm": {"prune_filter": _RNN, "prune_weight": _RNN, "prune_head": _HEADS, "prune_layer": _HEADS},
    "gru": {"prune_filter": _RNN, "prune_weight": _RNN, "prune_head": _HEADS, "prune_layer": _HEADS},
    "two_inputs": {"prune_head": _HEADS, "prune_layer": _HEADS},
    "vit": {"prune_filter": _VIT_FILTER, "prune_head": _VIT, "prune_layer": _VIT},
    "bert": {"prune_filter": _HF_FILTER},
    "gpt2": {"prune_filter": _HF_FILTER},
    "llama": {"prune_filter": _HF_FILTER, "distill": r"token-level distillation reads the text with the student's tokenizer"},
    "phi": {"prune_filter": r"on Hugging Face PhiForSequenceClassification: .* use layer \(whole blocks\)",
            "prune_head": r"PhiForSequenceClassification .* has other ones \(no self_attn.o_proj.*use granularity layer"},
    "t5": {"prune_filter": _T5_FILTER, "prune_head": _T5, "prune_layer": _T5},
}
CELLS = [pytest.param(family, stage, id=f"{family}-{stage}",
                      marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[family, stage])] if (family, stage) in KNOWN_BUGS else [])
         for family in FAMILIES for stage in STAGES]


def make_stage(stage: str) -> Any:
    return {
        "prune_filter": lambda: PruneStage(PruneConfig(granularity="filter", sparsity=0.5, finetune_epochs=0)),
        "prune_weight": lambda: PruneStage(PruneConfig(granularity="weight", sparsity=0.5, finetune_epochs=0)),
        "prune_head": lambda: PruneStage(PruneConfig(granularity="head", sparsity=0.5, finetune_epochs=0)),
        "prune_layer": lambda: PruneStage(PruneConfig(granularity="layer", sparsity=0.5, finetune_epochs=0)),
        "export_onnx": lambda: ExportStage(ExportConfig()),
        "ort_dynamic_int8": lambda: QuantizeStage(QuantizeConfig(mode="dynamic_int8", runtime="onnxruntime")),
        "ort_static_int8": lambda: QuantizeStage(QuantizeConfig(mode="static_int8", runtime="onnxruntime", calibration_batches=2)),
        "torch_int8_weight_only": lambda: QuantizeStage(QuantizeConfig(mode="int8_weight_only", runtime="torch")),
        "distill": lambda: DistillStage(DistillConfig(epochs=1, lr=1e-3, cache_teacher=True)),
    }[stage]()


@pytest.fixture(scope="module")
def datasets() -> dict[str, Any]:
    return {kind: build_data("tests.architectures.zoo:data", args={"kind": kind}, batch_size=8)
            for kind in ("image", "sequence", "tokens", "two_inputs")}


@pytest.fixture(scope="module")
def built() -> dict[str, nn.Module]:
    return {}


def model_of(family: str, built: dict[str, nn.Module]) -> nn.Module:
    if family not in built:
        torch.manual_seed(0)
        if family in HF_CONFIGS:
            kind, config = HF_CONFIGS[family]
            built[family] = build_model(f"hf:tiny-{family}", {"kind": kind, "config": config})
        else:
            built[family] = build_model(ZOO, {"name": family})
    return copy.deepcopy(built[family]).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Any]:
    """Artifacts written by the cells, reloaded together in one fresh process by the last test."""
    return {"root": tmp_path_factory.mktemp("artifacts"), "cells": []}


def _flat(x: Any, prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v.contiguous() for k, v in x.items()} if isinstance(x, dict) else {prefix: x.contiguous()}


def _cosine(a: Tensor, b: Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=-1).mean().item()


def _check_figures(stage: str, record: Any, reference: Tensor, got: Tensor) -> None:
    details = record.details
    if stage == "prune_filter":
        assert record.status == "done", record.notes
        assert details["macs_after"] < 0.9 * details["macs_before"] and details["params_after"] < details["params_before"]
    elif stage == "prune_weight":
        assert details["achieved_sparsity"] == pytest.approx(0.5, abs=0.05)
    elif stage in ("prune_head", "prune_layer"):
        assert details["params_after"] < details["params_before"]
    elif stage == "export_onnx":
        assert (got - reference).abs().max().item() < 1e-4
    elif stage.startswith(("ort_", "torch_")):  # int8 of random weights: close to the float model, never a silent collapse
        assert _cosine(got, reference) > 0.95


@pytest.mark.parametrize(("family", "stage"), CELLS)
def test_cell(family, stage, datasets, built, saved, tmp_path):
    data = datasets[FAMILIES[family]]
    model = model_of(family, built)
    expected = EXPECTED[family].get(stage, WORKS)
    ctx = RunContext(data=data, seed=0, work_dir=tmp_path / "work", teacher=copy.deepcopy(model) if stage == "distill" else None)
    x = data.example_batch(4)
    with torch.no_grad():
        reference = forward(model, x)
    if expected != WORKS:
        with pytest.raises(SlimtorchError) as info:
            make_stage(stage).apply(model, ctx)
        message = str(info.value)
        assert "\n" not in message and re.search(expected, message), message
        return
    out, record = make_stage(stage).apply(model, ctx)
    with torch.no_grad():
        got = forward(out, x)
    assert got.shape == reference.shape and torch.isfinite(got).all()
    _check_figures(stage, record, reference, got)
    macs = count_macs(out, data.example_batch(1))
    assert macs is not None and macs > 0
    directory = saved["root"] / f"{family}-{stage}"
    artifact.save(out, directory)
    back = artifact.load(directory, trusted_refs=[ZOO])
    with torch.no_grad():
        torch.testing.assert_close(forward(back, x), got, atol=1e-5, rtol=1e-4)
    save_file({**_flat(x, "x"), "y": got.contiguous()}, str(directory / "expected.safetensors"))
    saved["cells"].append(str(directory))


RELOAD = """
import json, sys, torch
from safetensors.torch import load_file
from slimtorch import artifact
from slimtorch.core import forward
torch.set_num_threads(1)
worst = {}
for directory in json.loads(sys.argv[1]):
    saved = load_file(directory + "/expected.safetensors")
    keys = [k for k in saved if k.startswith("x")]
    x = saved["x"] if keys == ["x"] else {k[2:]: saved[k] for k in keys}
    with torch.no_grad():
        got = forward(artifact.load(directory, trusted_refs=["tests.architectures.zoo:build"]), x)
    worst[directory] = (got - saved["y"]).abs().max().item() if got.shape == saved["y"].shape else float("inf")
print(json.dumps(worst))
"""


def test_every_working_cell_reloads_in_a_fresh_process(saved):
    if not saved["cells"]:
        pytest.skip("no cell of the matrix ran in this session")
    done = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(saved["cells"])], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    worst = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(worst) == set(saved["cells"])
    assert {d: v for d, v in worst.items() if v > 1e-5} == {}


def test_expected_table_names_only_known_families_and_stages():
    assert set(EXPECTED) == set(FAMILIES)
    assert all(set(cells) <= set(STAGES) for cells in EXPECTED.values())
    assert all(family in FAMILIES and stage in STAGES for family, stage in KNOWN_BUGS)

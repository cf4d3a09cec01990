"""Every Hugging Face model slimtorch saves loads with plain transformers, in a fresh interpreter without slimtorch.

For each stage kind that changes an HF model (heads, KV groups, FFN neurons, layers, a merged LoRA), the saved
``hf/`` directory is loaded by ``AutoModel*.from_pretrained`` in a subprocess that imports only torch and
transformers; its outputs must equal slimtorch's model. Every saved directory carries a model card.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimtorch import artifact
from slimtorch.lora import _peft
from slimtorch.prune import PruneConfig, PruneStage
from tests.prune.test_transformers import TINY, _collate, _ctx, _tiny

IDS = list(range(1, 13))

# Loads the directory with transformers alone and prints its outputs for IDS as JSON.
PLAIN = """
import json, sys
import torch, transformers
path, auto = sys.argv[1], sys.argv[2]
model = getattr(transformers, auto).from_pretrained(path).eval()
assert "slimtorch" not in sys.modules, "the check must run without slimtorch"
x = torch.tensor([{ids}])
with torch.no_grad():
    out = model(input_ids=x, attention_mask=torch.ones_like(x))
y = out.logits if auto == "AutoModelForCausalLM" else out.last_hidden_state
print(json.dumps(y[0].tolist()))
"""


def plain_outputs(directory: Path, auto: str) -> torch.Tensor:
    """``directory``'s outputs for IDS, computed by plain transformers in a fresh interpreter without slimtorch."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", PLAIN.format(ids=IDS), str(directory), auto], check=False, capture_output=True, text=True,
                          env=env, cwd=directory, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))


def slimtorch_outputs(model, kind: str) -> torch.Tensor:
    x, _ = _collate([(torch.tensor(IDS), 0)])
    with torch.no_grad():
        out = model.hf(**x)
    return (out.logits if kind == "causal_lm" else out.last_hidden_state)[0]


CASES = [  # (family, granularity, sparsity): every structural stage kind on every family it supports
    ("llama", "head", 0.5),   # GQA: whole KV groups (2 -> 1)
    ("llama", "ffn", 0.5),
    ("llama", "layer", 0.5),
    ("bert", "head", 0.5),    # the config cannot express fewer heads: removed heads saved as zeros
    ("bert", "ffn", 0.5),
    ("bert", "layer", 0.25),
    ("gpt2", "head", 0.5),
    ("gpt2", "ffn", 0.5),
    ("gpt2", "layer", 0.5),
]


@pytest.mark.parametrize("name, granularity, sparsity", CASES)
def test_pruned_model_loads_in_plain_transformers(name, granularity, sparsity, tmp_path):
    kind = TINY[name][0]
    model = _tiny(name)
    pruned, _ = PruneStage(PruneConfig(sparsity=sparsity, granularity=granularity, criterion="activation")).apply(model, _ctx(tmp_path))
    ours = slimtorch_outputs(pruned, kind)
    artifact.save(pruned, tmp_path / "saved", model_card={"stages": [f"prune {granularity} {sparsity}"], "figures": {"top1": 0.5}})
    auto = "AutoModelForCausalLM" if kind == "causal_lm" else "AutoModel"
    torch.testing.assert_close(plain_outputs(tmp_path / "saved" / "hf", auto), ours, atol=1e-5, rtol=1e-4)
    loaded = artifact.load(tmp_path / "saved")  # slimtorch's own loader gives back the smaller model
    assert sum(p.numel() for p in loaded.hf.parameters()) == sum(p.numel() for p in pruned.hf.parameters())
    torch.testing.assert_close(slimtorch_outputs(loaded, kind), ours, atol=1e-5, rtol=1e-4)
    card = (tmp_path / "saved" / "hf" / "README.md").read_text()
    assert f"prune {granularity} {sparsity}" in card and "| top1 | 0.5 |" in card and auto in card
    if granularity == "head" and name != "llama":
        assert "really used per layer: 2" in card


def test_merged_lora_loads_in_plain_transformers(tmp_path):
    model = _tiny("llama")
    before = slimtorch_outputs(model, "causal_lm")
    targets = _peft.resolve_targets(model, None)
    adapted = _peft.attach_lora_(model, targets, rank=2, lora_alpha=4, dropout=0.0)
    torch.manual_seed(1)
    for n, p in adapted.named_parameters():
        if "lora_B" in n:  # a trained adapter: non-zero B, so the merge changes the weights
            torch.nn.init.normal_(p, std=0.5)
    merged = _peft.merge_lora_(adapted)
    ours = slimtorch_outputs(merged, "causal_lm")
    assert not torch.allclose(ours, before, atol=1e-3)
    artifact.save(merged, tmp_path / "saved")
    torch.testing.assert_close(plain_outputs(tmp_path / "saved" / "hf", "AutoModelForCausalLM"), ours, atol=1e-5, rtol=1e-4)
    assert "No figures were given" in (tmp_path / "saved" / "hf" / "README.md").read_text()


def test_pipeline_card_has_measured_figures(tmp_path):
    from slimtorch.run.pipeline import compress

    raw = {"name": "card", "seed": 0, "data": {"source": "text", "args": {"max_sentences": 60}, "batch_size": 8},
           "teacher": {"model": "hf:tiny", "args": {"kind": "causal_lm", "config": {**TINY["llama"][1], "vocab_size": 30522}}},
           "stages": [{"prune": {"sparsity": 0.5, "granularity": "layer", "criterion": "activation"}}],
           "evaluate": {"latency": {"batch_sizes": [1], "warmup": 1, "repeats": 3},
                        "llm": {"window": 32, "stride": 24, "max_tokens": 64, "decode_tokens": 2, "decode_repeats": 1}}}
    compress(raw, tmp_path / "out")
    cards = sorted((tmp_path / "out" / "models").glob("*/hf/README.md"))
    assert cards, "every saved HF model has a card"
    texts = [c.read_text() for c in cards]
    assert all("| params |" in t and "AutoModelForCausalLM" in t for t in texts), texts[0]
    assert any("- prune" in t for t in texts), texts

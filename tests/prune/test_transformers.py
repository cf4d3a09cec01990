import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.data.bundle import DataBundle
from slimtorch.errors import UnsupportedModuleError
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage

TINY = {
    "bert": ("encoder", {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                         "intermediate_size": 64, "vocab_size": 120}),
    "gpt2": ("causal_lm", {"model_type": "gpt2", "n_embd": 32, "n_layer": 4, "n_head": 4, "vocab_size": 120,
                           "bos_token_id": 0, "eos_token_id": 0}),
    "llama": ("causal_lm", {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 120}),
}


def _collate(items):
    ids = torch.stack([i[0] for i in items])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.zeros(len(ids), dtype=torch.long)


def token_data(task: str) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    ds = lambda n: TensorDataset(torch.randint(1, 120, (n, 12), generator=g), torch.zeros(n, dtype=torch.long))
    return DataBundle("tokens", ds(32), ds(8), ds(8), task=task, collate_fn=_collate, batch_size=8)


def _tiny(name):
    kind, config = TINY[name]
    torch.manual_seed(0)
    return build_model("hf:tiny", {"kind": kind, "config": config})


def _ctx(tmp_path, task="embedding"):
    return RunContext(data=token_data(task), work_dir=tmp_path / "w", task=task)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("granularity, criterion", [("head", "magnitude"), ("ffn", "activation"), ("layer", "activation"),
                                                    ("layer", "taylor"), ("2:4", "activation")])
def test_tiny_round_trip(name, granularity, criterion, tmp_path):
    model = _tiny(name)
    params_before = sum(p.numel() for p in model.parameters())
    out, record = PruneStage(PruneConfig(sparsity=0.5, granularity=granularity, criterion=criterion)).apply(model, _ctx(tmp_path))
    x, _ = _collate([(torch.arange(1, 13), 0)] * 2)
    y = out(**x)
    assert not torch.isnan(y).any()
    if granularity != "2:4":
        assert sum(p.numel() for p in out.parameters()) < params_before
    artifact.save(out, tmp_path / "saved")
    loaded = artifact.load(tmp_path / "saved")
    torch.testing.assert_close(loaded(**x), y.detach(), atol=1e-5, rtol=1e-5)
    fmt = artifact.read_spec(tmp_path / "saved")["format"]
    if granularity == "head" and name != "llama":
        assert fmt == "hf_pruned" and any("hf_pruned" in n for n in record.notes)
    else:  # the config alone describes the model: plain from_pretrained works
        assert fmt == "hf"
        import transformers

        auto = transformers.AutoModel if name == "bert" else transformers.AutoModelForCausalLM
        plain = auto.from_pretrained(tmp_path / "saved" / "hf").eval()
        assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in loaded.hf.parameters())


def test_config_updated(tmp_path):
    out, record = PruneStage(PruneConfig(sparsity=0.5, granularity="ffn")).apply(_tiny("llama"), _ctx(tmp_path))
    assert out.hf.config.intermediate_size == 32 and record.details["ffn_per_layer"] == 32
    out, record = PruneStage(PruneConfig(sparsity=0.5, granularity="layer")).apply(_tiny("gpt2"), _ctx(tmp_path))
    assert out.hf.config.n_layer == 2 == len(out.hf.transformer.h)
    out, _ = PruneStage(PruneConfig(sparsity=0.5, granularity="head")).apply(_tiny("llama"), _ctx(tmp_path))
    assert (out.hf.config.num_attention_heads, out.hf.config.num_key_value_heads) == (2, 1)


def test_causal_lm_generates_after_layer_drop(tmp_path):
    out, _ = PruneStage(PruneConfig(sparsity=0.5, granularity="layer")).apply(_tiny("llama"), _ctx(tmp_path))
    ids = out.hf.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert ids.shape == (1, 7)


def test_head_granularity_on_cnn_explains(resnet, ctx):
    with pytest.raises(UnsupportedModuleError, match="needs a Hugging Face transformer"):
        PruneStage(PruneConfig(granularity="head")).apply(resnet, ctx)


def test_filter_on_hf_explains(tmp_path):
    with pytest.raises(UnsupportedModuleError, match="use head, ffn or layer"):
        PruneStage(PruneConfig(granularity="filter")).apply(_tiny("bert"), _ctx(tmp_path))


@pytest.fixture(scope="module")
def minilm():
    return build_model("hf:minilm")


@pytest.fixture(scope="module")
def text_data():
    import slimtorch.data.text  # noqa: F401  (registers the text source)
    from slimtorch.data import build_data

    return build_data("text", args={"max_sentences": 80}, batch_size=16)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["head", "ffn", "layer"])
def test_minilm(granularity, minilm, text_data, tmp_path):
    from slimtorch.measure.accuracy import mean_cosine, predict

    model = copy.deepcopy(minilm)
    ctx = RunContext(data=text_data, work_dir=tmp_path / "w", task="embedding", teacher=minilm)
    cfg = PruneConfig(sparsity=1 / 3 if granularity == "layer" else 0.25, granularity=granularity, criterion="activation")
    out, record = PruneStage(cfg).apply(model, ctx)
    ref, _ = predict(minilm, text_data.loader("test"))
    got, _ = predict(out, text_data.loader("test"))
    assert mean_cosine(got, ref) > 0.5
    assert record.details["params_after"] < record.details["params_before"]
    artifact.save(out, tmp_path / "saved")
    again, _ = predict(artifact.load(tmp_path / "saved"), text_data.loader("test"))
    torch.testing.assert_close(again, got, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_block_influence_counts_real_tokens_only(name):
    """The same sentences, bare or padded to 4x their length: padding must not change which layer looks least influential."""
    from slimtorch.prune.transformers import block_influence

    model = _tiny(name).eval()
    ids = torch.randint(1, 120, (3, 8), generator=torch.Generator().manual_seed(1))
    bare = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    padded_ids = torch.cat([ids, torch.zeros(3, 24, dtype=torch.long)], 1)
    padded = {"input_ids": padded_ids, "attention_mask": (torch.arange(32) < 8).long().expand(3, 32).clone()}
    labels = torch.zeros(3, dtype=torch.long)
    hf = model.hf
    torch.testing.assert_close(block_influence(model, hf, [(padded, labels)]), block_influence(model, hf, [(bare, labels)]),
                               atol=1e-4, rtol=1e-3)

"""Filter pruning on the layers people really use: depthwise convs, conv classifiers, torch attention, RNNs, HF wrappers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.errors import UnsupportedModuleError
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.prune.config import LayersConfig
from slimtorch.prune.targets import output_layers, select_layers
from slimtorch.prune.transformers import family

ZOO = "tests.architectures.zoo:build"


def _run(name: str, granularity: str, tmp_path, kind: str = "image") -> tuple[nn.Module, nn.Module, torch.Tensor]:
    bundle = build_data("tests.architectures.zoo:data", args={"kind": kind}, batch_size=8)
    model = build_model(ZOO, {"name": name}).eval()
    out, _ = PruneStage(PruneConfig(granularity=granularity, sparsity=0.5, finetune_epochs=0)).apply(
        copy.deepcopy(model), RunContext(data=bundle, work_dir=tmp_path / "work"))
    return model, out, bundle.example_batch(4)


def test_pruned_depthwise_conv_reloads(tmp_path):
    _, out, x = _run("depthwise", "filter", tmp_path)
    depthwise = out.depthwise[0]
    assert depthwise.groups == depthwise.out_channels == depthwise.in_channels < 32
    artifact.save(out, tmp_path / "a")
    back = artifact.load(tmp_path / "a", trusted_refs=[ZOO])  # was: "Given groups=32, expected weight to be at least 32"
    assert back.depthwise[0].groups == depthwise.groups
    with torch.no_grad():
        torch.testing.assert_close(back(x), out(x))


def test_conv_classifier_keeps_every_class(tmp_path):
    model, out, x = _run("conv_classifier", "filter", tmp_path)
    assert output_layers(model, x) == ["classifier.1"]  # a 1x1 conv, then ReLU, pooling and flatten
    assert out.classifier[1].out_channels == 4 and out(x).shape == (4, 4)  # was: 4 classes cut to 2
    assert out.features[2].out_channels < 32


def test_hidden_layers_of_the_output_width_are_not_heads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 4))
    assert output_layers(model, torch.randn(8, 6)) == ["2"]


@pytest.mark.parametrize("name", ["mha", "transformer_encoder"])
def test_torch_multihead_attention_is_cut_as_one_unit_and_reloads(name, tmp_path):
    _, out, x = _run(name, "filter", tmp_path, kind="sequence")
    attention = [m for m in out.modules() if isinstance(m, nn.MultiheadAttention)]
    assert attention and all(a.embed_dim < 32 and a.embed_dim % a.num_heads == 0 for a in attention)
    artifact.save(out, tmp_path / "a")
    back = artifact.load(tmp_path / "a", trusted_refs=[ZOO])  # was: "out_proj is not in the dependency graph"
    with torch.no_grad():
        torch.testing.assert_close(back(x), out(x))


def test_attention_projection_is_skipped_with_its_reason():
    model = build_model(ZOO, {"name": "mha"})
    targets, skipped = select_layers(model, LayersConfig(), torch.randn(2, 12, 16))
    assert "attn.out_proj" not in targets
    assert any(s.fqn == "attn.out_proj" and "nn.MultiheadAttention 'attn'" in s.reason for s in skipped)


@pytest.mark.parametrize(("name", "granularity"), [("lstm", "weight"), ("gru", "filter")])
def test_recurrent_layers_are_named_when_refused(name, granularity, tmp_path):
    with pytest.raises(UnsupportedModuleError, match=rf"rnn: {name.upper()} \(rnn\) has no pruning rule here"):
        _run(name, granularity, tmp_path, kind="sequence")


def _phi() -> nn.Module:
    torch.manual_seed(0)
    return build_model("hf:tiny-phi", {"kind": "causal_lm", "config": {
        "model_type": "phi", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 96, "max_position_embeddings": 32}}).hf


def _whisper() -> nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    return WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=96, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16, max_target_positions=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1))


def test_whisper_is_refused_by_head_ffn_and_layer_pruning():
    with pytest.raises(UnsupportedModuleError, match=r"LLaMA-like layouts; WhisperForConditionalGeneration .* mask granularity"):
        family(_whisper(), has_projections=False)


def test_phi_loses_whole_layers_but_is_refused_head_and_ffn_pruning_with_what_works():
    phi = _phi()
    with pytest.raises(UnsupportedModuleError, match=r"PhiForCausalLM .* \(no self_attn.o_proj, .*\); use granularity layer"):
        family(phi)  # was: AttributeError (PhiAttention has no attribute o_proj) half-way through the surgery
    assert family(phi, has_projections=False) == "llama"


def test_wrapped_vision_transformer_is_pointed_at_what_works(tmp_path):
    with pytest.raises(UnsupportedModuleError) as info:
        _run("vit", "filter", tmp_path)
    message = str(info.value)
    assert "Use a mask granularity" in message and "use head" not in message and "use layer" not in message  # was: advice that loops
    _, out, x = _run("vit", "weight", tmp_path)  # and that advice works
    assert out(x).shape == (4, 4)


class _Recurrent(nn.Module):
    """Linear -> LSTM -> Linear -> head: only the Linear after the LSTM can lose channels safely."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.rnn = nn.Linear(16, 32), nn.LSTM(32, 32, batch_first=True)
        self.mid, self.head = nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.rnn(self.inp(x))[0][:, -1])))


def test_layers_that_feed_an_rnn_are_left_whole_with_the_reason(tmp_path):
    bundle = build_data("tests.architectures.zoo:data", args={"kind": "sequence"}, batch_size=8)
    out, record = PruneStage(PruneConfig(granularity="filter", sparsity=0.5, finetune_epochs=0)).apply(
        _Recurrent(), RunContext(data=bundle, work_dir=tmp_path / "work"))
    assert out.rnn.hidden_size == out.rnn.input_size == out.inp.out_features == 32  # was: IndexError inside Torch-Pruning
    assert out.mid.out_features == 16
    reasons = {s["fqn"]: s["reason"] for s in record.details["skipped"]}
    assert "feed LSTM 'rnn'" in reasons["inp"] and "LSTM (rnn) has no pruning rule" in reasons["rnn"]


def test_masks_that_leave_most_weights_alone_say_so(tmp_path):
    bundle = build_data("tests.architectures.zoo:data", args={"kind": "sequence"}, batch_size=8)
    _, record = PruneStage(PruneConfig(granularity="weight", sparsity=0.5)).apply(
        _Recurrent(), RunContext(data=bundle, work_dir=tmp_path / "work"))
    warning = next(n for n in record.notes if n.startswith("WARNING: only"))
    assert "of the model's weights sit in layers that are masked" in warning and "rnn: LSTM (rnn)" in warning


def test_ordinary_pruning_gives_no_coverage_warning(tmp_path):
    bundle = build_data("tests.architectures.zoo:data", args={"kind": "image"}, batch_size=8)
    _, record = PruneStage(PruneConfig(granularity="filter", sparsity=0.5, finetune_epochs=0)).apply(
        build_model(ZOO, {"name": "convnet"}), RunContext(data=bundle, work_dir=tmp_path / "work"))
    assert not [n for n in record.notes if n.startswith("WARNING: only")]

"""One regression test per failure class of the architecture survey (issue 23) outside pruning and export."""

from __future__ import annotations

import copy
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from slimtorch.core import RunContext, forward
from slimtorch.data import build_data
from slimtorch.distill.engine import is_deterministic
from slimtorch.export.onnx import export_onnx
from slimtorch.measure.macs import count_macs
from slimtorch.measure.onnx_graph import duplicated_tables
from slimtorch.models import build_model
from slimtorch.quantize import QuantizeConfig, QuantizeStage, _ort
from slimtorch.runtime import OrtModule
from tests.architectures.test_matrix import HF_CONFIGS
from tests.architectures.zoo import EOS, build, data
from tests.reliability.user_shapes import Items


def _hf(family: str, kind: str | None = None) -> nn.Module:
    torch.manual_seed(0)
    default_kind, config = HF_CONFIGS[family]
    return build_model(f"hf:tiny-{family}", {"kind": kind or default_kind, "config": config})


# 1. distillation on dict inputs --------------------------------------------------------------------

class _Augmented(Dataset):
    """Dict inputs that change on every read (random augmentation)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return {"input_ids": torch.randint(0, 9, (5,)), "attention_mask": torch.ones(5, dtype=torch.long)}, 0


def test_dict_inputs_are_compared_entry_by_entry():
    tokens = data("tokens", n=8)["train"]
    assert is_deterministic(tokens)  # was: "Boolean value of Tensor with more than one value is ambiguous"
    assert not is_deterministic(_Augmented())


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_a_derived_student_distils_on_dict_inputs_and_reloads(family, tmp_path):
    from slimtorch import artifact
    from slimtorch.distill import DistillConfig, DistillStage
    from slimtorch.distill.auto_student import derive_student

    teacher = _hf(family)
    student = derive_student(teacher, width=1.0, depth=0.5)
    bundle = build_data("tests.architectures.zoo:data", args={"kind": "tokens"}, batch_size=8)
    out, record = DistillStage(DistillConfig(epochs=1, lr=1e-3)).apply(
        student, RunContext(data=bundle, teacher=teacher, work_dir=tmp_path / "work"))
    x = bundle.example_batch(4)
    assert record.details["hops"][-1]["cached_teacher"]  # dict inputs read twice compare equal: teacher outputs cached
    assert sum(p.numel() for p in out.parameters()) < sum(p.numel() for p in teacher.parameters())
    artifact.save(out, tmp_path / "student")
    with torch.no_grad():
        torch.testing.assert_close(artifact.load(tmp_path / "student")(**x), out(**x))


# 2. static int8 on causal decoders ---------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_static_int8_keeps_masked_attention_scores_float(family, caplog):
    model = _hf(family)
    tokens = build_data("tests.architectures.zoo:data", args={"kind": "tokens"}, batch_size=8)
    x = tokens.example_batch(8)
    fp32 = export_onnx(model, x)
    feeds = [{k: v.numpy() for k, v in tokens.example_batch(8, "train").items()}]
    with caplog.at_level(logging.WARNING, logger="slimtorch.quantize._ort"):
        int8 = _ort.quantize_static(fp32, feeds)
    assert _ort.nonfinite_ranges(int8) == []  # was: inf (-inf masks) or 1e36 (finfo.min masks) int8 scales
    assert "kept" in caplog.text and "in float because they read or write tensors that reach -inf" in caplog.text
    assert any("masked attention scores" in n for n in _ort.int8_notes(int8, "static int8"))  # for the stage's record
    softmax_inputs = {n.input[0] for n in onnx.load_from_string(int8).graph.node if n.op_type == "Softmax"}
    dequantized = {n.output[0] for n in onnx.load_from_string(int8).graph.node if n.op_type == "DequantizeLinear"}
    if family != "t5":  # every attention of a causal decoder is masked: its scores reach the softmax in float
        assert softmax_inputs and not softmax_inputs & dequantized
    feed = {k: v.numpy() for k, v in x.items()}
    want, got = (ort.InferenceSession(b, providers=["CPUExecutionProvider"]).run(None, feed)[0] for b in (fp32, int8))
    cosine = (want * got).sum(-1) / (np.linalg.norm(want, axis=-1) * np.linalg.norm(got, axis=-1))
    assert cosine.mean() > 0.98


# 5. int8 weight-only on layers whose parent reads `.weight` ---------------------------------------

@pytest.mark.parametrize("family", ["transformer_encoder", "t5"])
def test_int8_weight_only_runs_where_the_parent_reads_weight(family):
    if family == "t5":
        model, kind = _hf("t5"), "tokens"
    else:
        model, kind = build(family).eval(), "sequence"
    bundle = build_data("tests.architectures.zoo:data", args={"kind": kind}, batch_size=8)
    x = bundle.example_batch(4)
    with torch.no_grad():
        want = forward(model, x)
    out, _ = QuantizeStage(QuantizeConfig(mode="int8_weight_only", runtime="torch")).apply(copy.deepcopy(model), RunContext(data=bundle))
    with torch.no_grad():
        got = forward(out, x)
    assert torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1)).mean() > 0.99


# 6. silent no-ops and wrong figures ----------------------------------------------------------------

def _graph(name: str) -> tuple[bytes, torch.Tensor]:
    model = build(name).eval()
    x = torch.randn(2, 12, 16)
    return export_onnx(model, x), x


@pytest.mark.parametrize(("name", "mode", "warns"), [("gru", "dynamic", True), ("gru", "static", True),
                                                     ("lstm", "static", True), ("lstm", "dynamic", False)])
def test_int8_that_leaves_most_weights_float_says_so(name, mode, warns, caplog):
    fp32, x = _graph(name)
    with caplog.at_level(logging.WARNING, logger="slimtorch.quantize._ort"):
        int8 = _ort.quantize_dynamic(fp32) if mode == "dynamic" else _ort.quantize_static(fp32, [{"input": x.numpy()}])
    coverage = _ort.weight_coverage(int8)
    note = coverage.note(f"{mode} int8")
    assert (note is not None) == warns and ("of the weights in float" in caplog.text) == warns
    assert (note in _ort.int8_notes(int8, f"{mode} int8")) == warns
    if warns:
        assert coverage.float_share > 0.8 and name.upper() in note and "\n" not in note


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_macs_agree_between_torch_and_onnx(name):
    model, x = build(name).eval(), torch.randn(1, 12, 16)
    per_step = {"lstm": 4, "gru": 3}[name] * 32 * ((16 + 32) + (32 + 32))  # gates x H x (I + H), two layers
    expected = 12 * per_step + 32 * 4  # 12 steps, then the Linear head
    fp32 = export_onnx(model, x)
    assert count_macs(model, x) == expected  # nn.LSTM was 0: one fused kernel the flop counter never sees
    assert count_macs(OrtModule(fp32), x) == expected  # GRU was 0 in the ONNX graph
    assert count_macs(OrtModule(_ort.quantize_dynamic(fp32)), x) == expected


def test_transposed_shapes_are_a_tie_only_when_the_values_are():
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(8, 1024), nn.ReLU(), nn.Linear(1024, 8))  # (1024, 8) and (8, 1024): not a tie
    graph = onnx.load_from_string(export_onnx(ffn, torch.randn(2, 8)))
    assert duplicated_tables(graph) == []
    tied = nn.Sequential(nn.Linear(8, 1024, bias=False), nn.Linear(1024, 8, bias=False))
    with torch.no_grad():
        tied[1].weight.copy_(tied[0].weight.t())
    assert len(duplicated_tables(onnx.load_from_string(export_onnx(tied, torch.randn(2, 8))))) == 1


# 7. messages ---------------------------------------------------------------------------------------

def test_dict_input_pairs_are_accepted():
    bundle = build_data("tests.architectures.zoo:data", args={"kind": "tokens"}, batch_size=4)  # items: ({ids, mask}, y)
    x, y = next(iter(bundle.loader("train")))
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].shape == (4, 12) and y.shape == (4,)
    assert bool((x["input_ids"][:, -1] == EOS).all())


def test_dict_input_with_a_non_tensor_entry_is_refused_in_one_line():
    from slimtorch.data.checks import check_split
    from slimtorch.errors import DataError

    items = [({"input_ids": torch.zeros(3), "text": "hello"}, 0)]
    with pytest.raises(DataError, match=r"dict input whose entry 'text' is a str 'hello'; without a collate_fn"):
        check_split("mine", "train", Items(items), "classification", None)


def test_tensor_dataset_is_unchanged():
    from slimtorch.data.checks import check_split

    split = TensorDataset(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    assert check_split("mine", "train", split, "classification", None) is split


def test_static_int8_refuses_when_a_sentinel_range_cannot_be_kept_float():
    from slimtorch.errors import UnsupportedModuleError

    model = _hf("llama")
    tokens = build_data("tests.architectures.zoo:data", args={"kind": "tokens"}, batch_size=8)
    proto = onnx.load_from_string(export_onnx(model, tokens.example_batch(8)))
    for node in proto.graph.node:
        node.name = ""  # onnxruntime's nodes_to_exclude works by name: nothing can be kept float
    feeds = [{k: v.numpy() for k, v in tokens.example_batch(8, "train").items()}]
    with pytest.raises(UnsupportedModuleError, match=r"reaches -inf or float32's lowest value .* use mode: dynamic_int8"):
        _ort.quantize_static(proto.SerializeToString(), feeds)


# 7. `hf:` with a vision config: one line, not transformers' 180-line list ------------------------

VIT_CONFIG = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 32, "patch_size": 8}


@pytest.mark.parametrize(("kind", "reason"), [("encoder", (r"hf: loads text models, which take input_ids; a 'vit' model takes "
                                                          r"pixel_values\. Wrap it in your own module:function")),
                                              ("classifier", (r"cannot build a classifier from a 'vit' config: transformers has no "
                                                             r"AutoModelForSequenceClassification"))])
def test_hf_with_a_vision_config_is_one_line(kind, reason):
    import json
    import re

    from typer.testing import CliRunner

    from slimtorch.cli import app
    from slimtorch.errors import ModelRefError
    from slimtorch.models import build_model

    with pytest.raises(ModelRefError, match=reason):
        build_model("hf:tiny-vit", {"kind": kind, "config": VIT_CONFIG})
    result = CliRunner().invoke(app, ["measure", "hf:tiny-vit", "--args", json.dumps({"kind": kind, "config": VIT_CONFIG})])
    assert result.exit_code == 2 and re.search(reason, " ".join(result.output.split()))
    assert len(result.output.strip().splitlines()) <= 4 and "Traceback" not in result.output

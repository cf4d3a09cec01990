"""MAC counts with known answers (per example, batch 1)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from slimtorch.measure import count_macs, count_macs_noted
from slimtorch.models import build_model


def test_linear_macs_are_in_times_out_per_example():
    layer = nn.Linear(64, 10)
    assert count_macs(layer, torch.zeros(1, 64)) == 640
    assert count_macs(layer, torch.zeros(7, 64)) == 640  # per example, whatever the batch


def test_conv2d_macs_with_groups_stride_padding():
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2)
    # output (8, 5, 5); each output sums (4 / 2) channels × 3 × 3 taps
    assert count_macs(conv, torch.zeros(1, 4, 9, 9)) == 8 * 5 * 5 * 2 * 9


def test_conv1d_macs():
    conv = nn.Conv1d(3, 5, 4, stride=1, padding=0)
    assert count_macs(conv, torch.zeros(1, 3, 10)) == 5 * 7 * 3 * 4


def test_mlp_macs_sum_its_layers():
    model = build_model("mlp", {"hidden": [32]}, input_shape=(1, 8, 8), num_classes=10)
    assert count_macs(model, torch.zeros(1, 1, 8, 8)) == 64 * 32 + 32 * 10


def test_dynamic_int8_linear_has_the_same_macs():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    x = torch.zeros(2, 16)
    assert count_macs(q, x) == count_macs(model, x) == 16 * 8 + 8 * 4


def test_attention_matmuls_are_counted_for_hf_models():
    model = build_model("hf:tiny", {"kind": "encoder", "config": {
        "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "vocab_size": 100}})
    seq = 8
    x = {"input_ids": torch.ones(1, seq, dtype=torch.long), "attention_mask": torch.ones(1, seq, dtype=torch.long)}
    linear_macs = seq * (4 * 32 * 32 + 2 * 32 * 64)  # q, k, v, out projections + FFN
    attention_macs = 2 * seq * seq * 32  # QK^T and AV
    pooler_macs = 32 * 32  # BertModel's pooler on the first token
    assert count_macs(model, x) == linear_macs + attention_macs + pooler_macs


def _ort_module(model: nn.Module, x: torch.Tensor):
    from slimtorch.runtime import OrtModule

    buf = io.BytesIO()
    torch.onnx.export(model.eval(), x, buf, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return OrtModule(buf.getvalue())


@pytest.mark.filterwarnings("ignore")
def test_onnxruntime_macs_come_from_the_graph():
    model = build_model("cnn", {"channels": [4, 8], "hidden": 16}, input_shape=(1, 8, 8), num_classes=10)
    x = torch.zeros(1, 1, 8, 8)
    ort_model = _ort_module(model, x)
    macs, notes = count_macs_noted(ort_model, torch.zeros(3, 1, 8, 8))
    assert macs == count_macs(model, x)
    assert notes == []


class _Int8WeightOnly(nn.Module):
    """A weight-only int8 Linear: int8 weight in a buffer, the CPU weight-only kernel in forward."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax(1) / 127
        self.register_buffer("qweight", torch.round(w / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.qweight, self.scale)


def test_weight_only_int8_kernel_is_counted():
    from slimtorch.measure import count_params

    layer = _Int8WeightOnly(nn.Linear(32, 16, bias=False))
    assert count_macs(layer, torch.zeros(4, 32)) == 32 * 16
    assert count_params(layer) == 32 * 16  # weights held in a buffer are still weights


def test_unsorted_onnx_graph_is_counted():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from slimtorch.measure.onnx_graph import onnx_macs

    w = numpy_helper.from_array(torch.zeros(6, 5).numpy().astype("float16"), "w")
    nodes = [  # Gemm listed before the Cast that feeds it, as some converters write
        helper.make_node("Gemm", ["xh", "w"], ["yh"], transB=1),
        helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert onnx_macs(model, torch.zeros(2, 5)) == (2 * 5 * 6, [])
    assert isinstance(model, onnx.ModelProto)


def _reshape_by_input_graph():
    """x (N·4/4) is reshaped by a shape that arrives as an input: static inference cannot know the MatMul's shape."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(torch.ones(4, 5).numpy(), "w")
    nodes = [helper.make_node("Reshape", ["x", "s"], ["xr"]), helper.make_node("MatMul", ["xr", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6]),
                                           helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_shapes_known_only_at_run_time_are_read_from_one_run():
    from slimtorch.measure.onnx_graph import onnx_macs

    macs, notes = onnx_macs(_reshape_by_input_graph(), {"x": torch.zeros(2, 6), "s": torch.tensor([3, 4])})
    assert (macs, notes) == (3 * 4 * 5, [])


def test_onnx_macs_that_cannot_all_be_counted_are_unknown_not_partial():
    from slimtorch.measure.onnx_graph import onnx_macs

    macs, (note,) = onnx_macs(_reshape_by_input_graph(), {"x": torch.zeros(2, 6)})  # no 's': the run cannot happen
    assert macs is None and note.startswith("MACs not counted: 1 node(s) of the ONNX graph") and "(MatMul)" in note


def test_a_tied_table_written_twice_by_the_exporter_is_found():
    from onnx import TensorProto, helper, numpy_helper

    from slimtorch.measure.onnx_graph import duplicated_tables

    table = torch.zeros(1200, 8).numpy()
    inits = [numpy_helper.from_array(table, "wte"), numpy_helper.from_array(table.T.copy(), "head_t"),
             numpy_helper.from_array(torch.zeros(8, 8).numpy(), "proj")]
    graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("wte", TensorProto.FLOAT, None)], inits)
    assert duplicated_tables(helper.make_model(graph)) == ["wte [1200, 8] and head_t [8, 1200]"]
    del graph.initializer[1]
    assert duplicated_tables(helper.make_model(graph)) == []


def test_quick_counts_skip_zero_weights_and_match_count_macs():
    from slimtorch.measure import layer_macs, quick_counts

    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight[:2] = 0  # half of the first layer's weights
    x = torch.zeros(3, 8)
    counts = quick_counts(net, x)
    assert counts.macs == count_macs(net, x) == 8 * 4 + 4 * 2
    assert counts.nonzero_macs == counts.macs - 16
    assert counts.params == 8 * 4 + 4 + 4 * 2 + 2 and counts.nonzero_params == counts.params - 16
    assert layer_macs(net, x)["0"].nonzero_macs == 16

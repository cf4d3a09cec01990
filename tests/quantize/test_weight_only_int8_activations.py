"""int8 weight-only layers with int8 activations on fbgemm (``quantize.int8_activations: int8``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.models import build_model
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.quantize._torch import REDUCE_RANGE, WeightOnlyEmbedding, WeightOnlyLinear, int8_dynamic_mm

LLAMA = {"model_type": "llama", "vocab_size": 30522, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": True}


@pytest.fixture(scope="module")
def data():
    return build_data("text", args={"max_sentences": 32, "max_length": 12}, batch_size=8)


def _int8_layer(activations: str) -> WeightOnlyLinear:
    torch.manual_seed(0)
    layer = WeightOnlyLinear.from_linear(nn.Linear(96, 200), bits=8)
    layer.activations = activations
    return layer


def _error(layer: WeightOnlyLinear, x: torch.Tensor, out: torch.Tensor | None = None) -> float:
    exact = x @ layer.dequantized_weight().T + layer.bias  # the layer's own float weights
    out = layer(x) if out is None else out
    return ((out - exact).norm() / exact.norm()).item()


def test_int8_activations_stay_close_to_float_and_a_residual_pass_closer_than_bf16():
    x = torch.randn(3, 5, 96, generator=torch.Generator().manual_seed(0))
    x[..., 7] *= 30  # an outlier channel sets the int8 range, as in an LLM's hidden states
    bf16, int8, int8x2 = _int8_layer("bf16"), _int8_layer("int8"), _int8_layer("int8x2")
    assert int8(x).shape == (3, 5, 200) and int8(x).dtype == torch.float32
    one, two, ref = _error(int8, x), _error(int8x2, x), _error(bf16, x)
    # The grid this CPU's kernel uses: 8-bit activations with VNNI, 7-bit (reduce_range) without, where fbgemm adds
    # u8·s8 pairs in saturating int16. The int32 sums are exact either way, so one pass is the error of that grid.
    on_grid = torch.quantize_per_tensor_dynamic(x, torch.quint8, REDUCE_RANGE).dequantize()
    grid = _error(int8, x, on_grid @ int8.dequantized_weight().T + int8.bias)
    assert abs(one - grid) < 0.02 * grid, (one, grid)
    assert one < (0.10 if REDUCE_RANGE else 0.05)  # measured: 0.031 with 8 bits, 0.064 with 7
    # bf16 (native with AVX512-BF16, emulated in fp32 without): no worse than rounding the input and output to bf16
    w = bf16.dequantized_weight().T
    rounded = _error(bf16, x, (x.bfloat16().float() @ w).bfloat16().float() + bf16.bias)
    assert ref < 1.5 * rounded, (ref, rounded)
    assert two < ref < one  # bf16's 8-bit mantissa lies between one and two int8 digits


def test_codes_changed_in_place_are_packed_again():
    layer = _int8_layer("int8")
    x = torch.randn(2, 96)
    before = layer(x)
    with torch.no_grad():
        layer.qweight.neg_()  # what load_state_dict does to a built layer: same tensor, new codes
    torch.testing.assert_close(layer(x) - layer.bias, -(before - layer.bias), rtol=0.02, atol=0.02)


def test_the_fbgemm_matmul_compiles_as_one_graph():
    layer = _int8_layer("int8x2")
    x = torch.randn(1, 96)
    layer.pack_for_kernels_()
    compiled = torch.compile(layer, fullgraph=True, backend="eager")  # the custom op is opaque to dynamo: no graph break
    torch.testing.assert_close(compiled(x), layer(x))
    assert int8_dynamic_mm(x, layer.qweight, layer.scale, 2).shape == (1, 200)


def test_int4_model_with_an_int8_lm_head_on_int8_activations_round_trips(tmp_path, data):
    torch.manual_seed(0)
    model = build_model("hf:tiny-llama", {"kind": "causal_lm", "config": LLAMA})
    cfg = QuantizeConfig(mode="int4_weight_only", runtime="torch", group_size=32, embedding_bits=8, int8_activations="int8x2")
    out, record = QuantizeStage(cfg).apply(model, RunContext(data=data))
    head, table = out.hf.lm_head, out.hf.model.embed_tokens
    assert isinstance(head, WeightOnlyLinear) and head.bits == 8 and head.activations == "int8x2"
    assert isinstance(table, WeightOnlyEmbedding) and table.table is head  # still one table, stored once
    assert record.details["int8_activation_linears"] == ["hf.lm_head"]  # the int4 layers keep bf16 activations
    ids = torch.randint(0, 30522, (2, 10))
    with torch.inference_mode():
        before = out.hf(input_ids=ids).logits
    loaded = artifact.load(artifact.save(out, tmp_path / "q"))
    assert loaded.hf.lm_head.activations == "int8x2"
    with torch.inference_mode():
        torch.testing.assert_close(loaded.hf(input_ids=ids).logits, before)


def test_int8_activations_without_an_int8_layer_is_refused():
    with pytest.raises(ValueError, match="int8_activations: int8 applies to torch int8 weight-only layers"):
        QuantizeConfig(mode="int4_weight_only", runtime="torch", group_size=32, embedding_bits=4, int8_activations="int8")


@pytest.mark.parametrize(("line", "what"), [
    ("  - quantize: {mode: int4_weight_only, runtime: torch, group_size: 64, embedding_bits: 4, int8_activations: int8x2}",
     "int8_activations: int8x2 applies to torch int8 weight-only layers"),
    ("  - quantize: {mode: int8_weight_only, runtime: torch, int8_activations: int4}", "int8_activations"),
])
def test_a_recipe_with_a_bad_int8_activations_is_one_line_exit_2(tmp_path, line, what):
    from typer.testing import CliRunner

    from slimtorch.cli import app

    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nteacher: {{model: mlp}}\nstages:\n{line}\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and what in lines[0], result.stderr

"""llama.cpp's block formats: grids as stored, bytes checked against the gguf package's dequantizer, GPTQ on them, plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimtorch.quantize.ggml_blocks import BLOCK_TYPES, block_grid, gptq_codes, pack, quantize_blocks
from slimtorch.quantize.gguf_plan import allocate, mix_plan, tensor_bytes, use_more_bits

gguf = pytest.importorskip("gguf")


def _weight(rows: int = 8, cols: int = 512, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[0, :40] += 0.8  # an outlier group and an all-positive one: the signed and clamped-minimum paths
    w[1, 32:64] = w[1, 32:64].abs() + 0.1
    return w


@pytest.mark.parametrize("name", sorted(BLOCK_TYPES))
def test_packed_bytes_dequantize_in_gguf_exactly_as_the_grid_says(name):
    w = _weight()
    grid = block_grid(w, name)
    codes = grid.codes(w)
    data = pack(codes, grid)
    qt = BLOCK_TYPES[name]
    assert data.shape == (8, 512 // qt.block * qt.block_bytes) and data.dtype == np.uint8
    theirs = gguf.quants.dequantize(data, getattr(gguf.GGMLQuantizationType, name.upper()))
    np.testing.assert_array_equal(theirs, grid.dequantize(codes).numpy())
    # More bits, less error: the grid is a real quantizer of w, not an arbitrary decodable one.
    assert float((grid.dequantize(codes) - w).abs().mean()) < 0.2 * float(w.abs().mean()) * 4 / qt.bits


def test_gptq_on_the_stored_grid_lowers_the_output_error_of_round_to_nearest():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2048, 256, generator=g) @ (torch.eye(256) + 0.3 * torch.randn(256, 256, generator=g))  # correlated inputs
    h = 2 * x.T @ x / len(x)
    w = _weight(16, 256, seed=2)
    for name in ("q4_k", "q6_k", "q4_0"):
        grid = block_grid(w, name, torch.diag(h))
        rtn, opt = grid.codes(w), gptq_codes(w, h, grid)
        assert int(opt.min()) >= 0 and int(opt.max()) <= grid.qtype.qmax

        def error(codes, grid=grid):
            delta = grid.dequantize(codes) - w
            return float(((delta @ h) * delta).sum())

        assert error(opt) < 0.8 * error(rtn), name
    data, deq = quantize_blocks(w, "q4_k", h, use_gptq=True)
    np.testing.assert_array_equal(gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_K), deq.numpy())


def test_a_row_that_is_no_multiple_of_the_block_is_refused_clearly():
    with pytest.raises(ValueError, match="blocks of 256; this weight has 576 columns"):
        block_grid(torch.randn(4, 576), "q4_k")


def test_q4_k_m_mix_follows_llama_cpp_on_smollm2_shapes():
    columns = {"token_embd": 576}
    for i in range(30):
        columns |= {f"blk.{i}.{n}": 576 for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up")}
        columns[f"blk.{i}.ffn_down"] = 1536
    plan = mix_plan("q4_k_m", columns, 30)
    more = [i for i in range(30) if use_more_bits(i, 30)]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert plan["token_embd"] == "q8_0"  # tied output: Q6_K, which falls back to Q8_0 on 576-wide rows
    assert plan["blk.0.ffn_down"] == "q6_k" and plan["blk.3.ffn_down"] == "q4_k"
    assert plan["blk.0.attn_v"] == "q8_0" and plan["blk.3.attn_v"] == "q5_0" and plan["blk.3.attn_q"] == "q5_0"
    assert mix_plan("q5_k_m", columns, 30)["blk.3.attn_q"] == "q5_1"


def test_allocate_meets_the_budget_and_spends_bytes_where_the_error_falls_most():
    shapes = {"a": (256, 256), "b": (256, 256)}
    errors = {"a": {"q4_k": 100.0, "q5_k": 50.0, "q6_k": 25.0, "q8_0": 1.0},
              "b": {"q4_k": 10.0, "q5_k": 5.0, "q6_k": 2.5, "q8_0": 0.1}}
    cheapest = 2 * tensor_bytes("q4_k", 256, 256)
    plan = allocate(errors, shapes, cheapest + tensor_bytes("q5_k", 256, 256) - tensor_bytes("q4_k", 256, 256))
    assert plan.types == {"a": "q5_k", "b": "q4_k"} and plan.bytes <= plan.budget_bytes
    assert allocate(errors, shapes, 10**9).types == {"a": "q8_0", "b": "q8_0"}
    with pytest.raises(ValueError, match="cheapest types need"):
        allocate(errors, shapes, cheapest - 1)

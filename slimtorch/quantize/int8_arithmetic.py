"""onnxruntime's int8 arithmetic as this CPU computes it: exact int32 sums, or uint8 × int8 pairs saturated at int16.

Without VNNI (AVX2-only CPUs) MLAS's ``vpmaddubsw`` adds each pair of products in saturating int16 before widening.
The QAT simulations (``dynamic_qat``, ``qat``) add what that clipping changes; the quantize stage picks 7-bit weights
(``reduce_range``) where it happens.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn import functional as F

from slimtorch.optional import import_optional


@functools.cache
def u8s8_saturates() -> bool:
    """Whether onnxruntime's uint8 × int8 GEMM on this CPU adds products in saturating int16 pairs.

    MLAS's AVX2 kernel (``vpmaddubsw``; CPUs without VNNI) sums ``a[2i]·b[2i] + a[2i+1]·b[2i+1]`` in int16 before
    widening, so 255·127·2 clips to 32767; VNNI (and ARM) sum in int32. Asked of onnxruntime itself, so the answer
    is this CPU's, whatever /proc/cpuinfo says.
    """
    import numpy as np
    ort = import_optional("onnxruntime", feature="int8 in onnxruntime")
    onnx = import_optional("onnx", feature="int8 in onnxruntime")
    TensorProto, helper = onnx.TensorProto, onnx.helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "u8s8",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 4])], [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
        [helper.make_tensor("b", TensorProto.INT8, [4, 1], [127] * 4)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return int(session.run(None, {"a": np.full((1, 4), 255, np.uint8)})[0].item()) != 255 * 127 * 4


def int16_pair_excess(qx: Tensor, qw: Tensor, chunk: int = 1 << 22) -> Tensor:
    """``saturated − exact`` of ``qx @ qw.T`` when pairs of products are summed in saturating int16 (MLAS on AVX2).

    ``qx`` (M, K) uint8 codes, ``qw`` (N, K) int8 codes, as float. -> (M, N), zero where nothing saturates. Only the
    pairs of K whose largest products can pass 32767 are computed, ``chunk`` elements at a time.
    """
    if qx.shape[1] % 2:
        qx, qw = F.pad(qx, (0, 1)), F.pad(qw, (0, 1))
    x2, w2 = qx.unflatten(1, (-1, 2)), qw.unflatten(1, (-1, 2))  # (M, P, 2), (N, P, 2)
    bound = (x2.abs().amax(0) * w2.abs().amax(0)).sum(-1)  # (P,) the largest |pair sum| any row and column can reach
    risky = torch.nonzero(bound > 32767).flatten()
    excess = qx.new_zeros(qx.shape[0], qw.shape[0])
    if risky.numel() == 0:
        return excess
    x2, w2 = x2[:, risky], w2[:, risky]
    rows = max(1, chunk // (qw.shape[0] * risky.numel()))
    for start in range(0, qx.shape[0], rows):
        pairs = torch.einsum("mpk,npk->mnp", x2[start:start + rows], w2)  # exact in float32: |sum| ≤ 2·255·128
        excess[start:start + rows] = (pairs.clamp(-32768, 32767) - pairs).sum(-1)
    return excess

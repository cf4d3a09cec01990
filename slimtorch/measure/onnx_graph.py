r"""Facts about models that run an ONNX graph (onnxruntime, OpenVINO), read from the graph (weights and MACs).

The runtime wrappers (:class:`slimtorch.runtime.OrtModule`, :class:`slimtorch.runtime.OpenVINOModule`) are
``nn.Module``\ s with ``slimtorch_runtime`` ``"onnxruntime"`` or ``"openvino"``; the ONNX model is read from its ``onnx_bytes``, or else from an
``onnx_path``/``model_path`` attribute, an ``onnx.ModelProto`` attribute, or the
``onnxruntime.InferenceSession`` it holds.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

log = logging.getLogger(__name__)

_PATH_ATTRS = ("onnx_path", "model_path", "path")
# op type -> (index of input A, index of input B / weight)
_MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "FusedMatMul": (0, 1),
               "MatMulIntegerToFloat": (0, 1), "DynamicQuantizeMatMul": (0, 1), "MatMulNBits": (0, None)}
_CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1, "NhwcConv": 1}


# Recurrent layers: every step multiplies the input by W (gates·H, I) and the state by R (gates·H, H), per direction.
_RECURRENT_OPS = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
_COUNTED_OPS = {*_MATMUL_OPS, *_CONV_OPS, *_RECURRENT_OPS, "Gemm", "Attention", "MultiHeadAttention"}

ONNX_RUNTIMES = ("onnxruntime", "openvino")


def runs_onnx_graph(model: nn.Module) -> bool:
    """True for a wrapper that runs an ONNX graph (onnxruntime's or OpenVINO's), with ``onnx_bytes`` and a thread setting."""
    return getattr(model, "slimtorch_runtime", "torch") in ONNX_RUNTIMES


def onnx_model_of(model: nn.Module) -> Any | None:
    """The ``onnx.ModelProto`` behind an onnxruntime wrapper, or None for a torch model."""
    if not runs_onnx_graph(model):
        return None
    import onnx

    candidates: list[Any] = [getattr(model, a, None) for a in ("onnx_bytes", *_PATH_ATTRS, "onnx_model")]
    candidates += list(vars(model).values())
    for value in candidates:
        if isinstance(value, onnx.ModelProto):
            return value
        if isinstance(value, bytes) and value:
            return onnx.load_from_string(value)
        if isinstance(value, (str, Path)) and str(value).endswith(".onnx") and Path(value).is_file():
            return onnx.load(str(value))
        path = getattr(value, "_model_path", None)  # onnxruntime.InferenceSession
        if path and Path(path).is_file():
            return onnx.load(str(path))
        raw = getattr(value, "_model_bytes", None)
        if raw:
            return onnx.load_from_string(raw)
    log.warning("onnxruntime model %s exposes no ONNX graph; counts will be empty", type(model).__name__)
    return None


def onnx_initializers(graph_model: Any) -> list[np.ndarray]:
    """The weight arrays stored in the ONNX graph."""
    from onnx import numpy_helper

    return [numpy_helper.to_array(t) for t in graph_model.graph.initializer]


def duplicated_tables(graph_model: Any, min_rows: int = 1000) -> list[str]:
    """Initializers stored twice as ``(V, d)`` and ``(d, V)``: a tied embedding table that the exporter wrote
    once for its Gather and once, transposed, for the output MatMul (``V ≥ min_rows``)."""
    from onnx import numpy_helper

    shapes: dict[tuple[int, ...], list[Any]] = {}
    for t in graph_model.graph.initializer:
        if len(t.dims) == 2 and max(t.dims) >= min_rows and min(t.dims) > 1:
            shapes.setdefault(tuple(t.dims), []).append(t)
    found = []
    for (v, d), tables in shapes.items():
        if v <= d:
            continue
        # Transposed shapes alone are no tie (an FFN's up and down projections are (4H, H) and (H, 4H)): compare the values.
        pairs = ((a, b) for a in tables for b in shapes.get((d, v), []))
        tie = next(((a, b) for a, b in pairs if np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b).T)), None)
        if tie is not None:
            found.append(f"{tie[0].name} {[v, d]} and {tie[1].name} {[d, v]}")
    return found


def onnx_macs(graph_model: Any, example_input: Tensor | dict[str, Tensor]) -> tuple[int | None, list[str]]:
    """MACs of one run of the graph on ``example_input``; returns ``(macs, notes)``.

    Graph inputs are fixed to the example's shapes and shapes are inferred; MatMul/Gemm/Conv nodes
    (plain, integer and QLinear variants), LSTM/GRU/RNN and onnxruntime's fused Attention are counted. Shapes that static
    inference cannot find are read from one onnxruntime run on the example; if some stay unknown the
    count is None (a partial count would make every ratio against it wrong) and the note names them.
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(graph_model)
    _fix_input_shapes(model, example_input)
    _sort_nodes(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several private error types
        return None, [f"MACs not counted: ONNX shape inference failed ({exc})."]
    shapes = _known_shapes(model)
    if any(_node_macs(node, shapes) is None for node in model.graph.node):
        # Static inference gives up where shapes are computed at run time (attention masks, Reshape of
        # Shape-derived values): run the graph once on the example and read the shapes it really had.
        shapes.update(_runtime_shapes(model, example_input, shapes))
    total, skipped = 0, []
    for node in model.graph.node:
        macs = _node_macs(node, shapes)
        if macs is None:
            skipped.append(node.op_type)
        else:
            total += macs
    if skipped:  # a partial count would make every ratio against it a false claim
        return None, [(f"MACs not counted: {len(skipped)} node(s) of the ONNX graph have shapes that neither inference nor a "
                       f"run on the example revealed ({', '.join(sorted(set(skipped)))}).")]
    return total, []


def _runtime_shapes(model: Any, example_input: Tensor | dict[str, Tensor], known: dict[str, list[int]]) -> dict[str, list[int]]:
    """Shapes of the unknown inputs and outputs of MAC-bearing nodes, from one onnxruntime run on ``example_input``."""
    import onnx
    import onnxruntime as ort

    wanted = {name for node in model.graph.node if node.op_type in _COUNTED_OPS
              for name in (*node.input[:2], *node.output[:1]) if name and name not in known}
    if not wanted:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for name in sorted(wanted - outputs):  # a bare name: onnxruntime takes the type the graph gives it (contrib ops have none inferred)
        probe.graph.output.add().name = name
    initializer_names = {t.name for t in probe.graph.initializer}
    inputs = [i.name for i in probe.graph.input if i.name not in initializer_names]
    feeds = ({n: example_input[n].cpu().numpy() for n in inputs if n in example_input} if isinstance(example_input, dict)
             else {inputs[0]: example_input.cpu().numpy()} if inputs else {})
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named tensor
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several private error types
        log.debug("runtime shapes of the ONNX graph not available: %s", exc)
        return {}
    return {n: list(v.shape) for n, v in zip(names, values) if n in wanted}


def _fix_input_shapes(model: Any, example_input: Tensor | dict[str, Tensor]) -> None:
    initializer_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializer_names]
    if isinstance(example_input, dict):
        tensors = {i.name: example_input.get(i.name) for i in inputs}
    else:
        tensors = {inputs[0].name: example_input} if inputs else {}
    for inp in inputs:
        t = tensors.get(inp.name)
        if t is None:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != t.dim():
            continue
        for dim, size in zip(dims, t.shape):
            dim.ClearField("dim_param")
            dim.dim_value = int(size)


def _sort_nodes(model: Any) -> None:
    """Topologically sort the graph's nodes (some tools append casts at the end; inference needs order)."""
    ready = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            return  # a cycle or an outer-scope input: leave the graph as it is
        for n in runnable:
            ordered.append(n)
            ready.update(n.output)
        pending = [n for n in pending if n not in runnable]
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del model.graph.node[:]
    model.graph.node.extend(copies)


def _known_shapes(model: Any) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def _node_macs(node: Any, shapes: dict[str, list[int]]) -> int | None:
    out = shapes.get(node.output[0]) if node.output else None
    if node.op_type in _MATMUL_OPS:
        a_idx, _ = _MATMUL_OPS[node.op_type]
        a = shapes.get(node.input[a_idx])
        return None if out is None or a is None else math.prod(out) * a[-1]
    if node.op_type == "Gemm":
        a = shapes.get(node.input[0])
        if out is None or a is None:
            return None
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return math.prod(out) * (a[0] if trans_a else a[1])
    if node.op_type in _CONV_OPS:
        w = shapes.get(node.input[_CONV_OPS[node.op_type]])
        return None if out is None or w is None else math.prod(out) * math.prod(w[1:])
    if node.op_type in _RECURRENT_OPS:  # X (T, B, I) or (B, T, I); W, R in either orientation: only their sizes matter
        x, w, r = (shapes.get(node.input[i]) if len(node.input) > i else None for i in (0, 1, 2))
        return None if x is None or w is None or r is None else math.prod(x[:2]) * (math.prod(w) + math.prod(r))
    if node.op_type == "Attention":  # onnxruntime's fused layer: the QKV projection, then QK^T and the weighted V
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if x is None or w is None or len(x) != 3:
            return None
        (b, seq, width), qkv = x, w[-1]
        return b * seq * width * qkv + 2 * b * seq * seq * (qkv // 3)
    if node.op_type == "MultiHeadAttention":  # projected q, k, v in: QK^T and the weighted V
        q, k = shapes.get(node.input[0]), shapes.get(node.input[1]) if len(node.input) > 1 else None
        if q is None or k is None or len(q) != 3 or len(k) != 3:
            return None
        return 2 * q[0] * q[1] * k[1] * q[2]
    return 0

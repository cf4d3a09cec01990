"""Thin adapter over onnxruntime's quantizer: dynamic int8, static int8 (QDQ) and fp16 conversion.

All functions take and return serialized ONNX bytes; onnxruntime's tools want file paths, so they
run in a private temporary directory.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from slimtorch.errors import NotCalibratedError, UnsupportedModuleError
from slimtorch.optional import import_optional

log = logging.getLogger(__name__)


def _quantization() -> Any:
    import_optional("onnx", feature="onnxruntime quantization")
    return import_optional("onnxruntime.quantization", feature="onnxruntime quantization")


def ort_version() -> str:
    return str(import_optional("onnxruntime", feature="int8 in onnxruntime").__version__)


def _preprocess(src: Path, dst: Path) -> Path:
    """Shape inference + graph optimisation recommended before quantizing; falls back to the input."""
    quantization = _quantization()
    try:
        quantization.shape_inference.quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception as exc:  # noqa: BLE001 - any failure here only loses an optimisation; logged
        log.warning("onnxruntime quant_pre_process failed (%s); quantizing the unoptimised graph", exc)
        return src
    return dst


def quantize_dynamic(
    onnx_bytes: bytes,
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
    op_types: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    preprocess: bool = True,
) -> bytes:
    """Int8 weights, activations quantized on the fly (MatMul/Gemm/Gather...). Returns ONNX bytes."""
    quantization = _quantization()
    quantized = _quantize_file(onnx_bytes, preprocess, lambda src, out: quantization.quantize_dynamic(
        str(src), str(out), per_channel=per_channel, reduce_range=reduce_range,
        weight_type=quantization.QuantType.QInt8, op_types_to_quantize=list(op_types) if op_types else None,
        nodes_to_exclude=list(nodes_to_exclude), extra_options={"DefaultTensorType": 1},  # FLOAT
    ))
    _warn_if_mostly_float("dynamic int8", quantized)
    return quantized


class WeightCoverage(NamedTuple):
    """How much of a graph's weight matrices int8 left in float, and in which ops."""

    float_share: float  # fraction of weight-matrix elements (initializers of 2+ dims) still float
    float_by_op: dict[str, int]  # op type -> float weight elements it reads

    def note(self, what: str) -> str | None:
        """A warning when most weights stayed float (e.g. GRU in dynamic int8, LSTM in static int8), else None."""
        if self.float_share <= 0.5:
            return None
        ops = ", ".join(f"{op} ({n:,} weights)" for op, n in sorted(self.float_by_op.items(), key=lambda kv: -kv[1]))
        hint = ("mode: dynamic_int8 has an int8 LSTM kernel" if "LSTM" in self.float_by_op and what.startswith("static")
                else "keep this model in float, or quantize its Linear/Conv layers only knowing the rest stays float")
        return (f"WARNING: {what} left {self.float_share:.0%} of the weights in float: onnxruntime has no int8 kernel for {ops} "
                f"in this mode, so size and speed barely change; {hint}.")


def weight_coverage(onnx_bytes: bytes) -> WeightCoverage:
    """Float vs int8 weight matrices of a (quantized) ONNX graph; embedding-free graphs count every 2+-D initializer."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    consumers: dict[str, str] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, node.op_type)
    total = 0
    by_op: dict[str, int] = {}  # float weight elements per consuming op type
    for init in proto.graph.initializer:
        if len(init.dims) < 2 or init.name not in consumers:
            continue
        size = int(np.prod(init.dims))
        total += size
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            op = consumers[init.name]
            by_op[op] = by_op.get(op, 0) + size
    return WeightCoverage(sum(by_op.values()) / total if total else 0.0, by_op)


def _warn_if_mostly_float(what: str, quantized: bytes) -> None:
    note = weight_coverage(quantized).note(what)
    if note:
        log.warning(note.removeprefix("WARNING: "))


def _quantize_file(onnx_bytes: bytes, preprocess: bool, quantize: Callable[[Path, Path], None]) -> bytes:
    """onnxruntime's quantizers work on files: run ``quantize(src, out)`` in a private temporary directory."""
    with tempfile.TemporaryDirectory(prefix="slimtorch-ort-") as tmp:
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "quantized.onnx"
        src.write_bytes(onnx_bytes)
        if preprocess:
            src = _preprocess(src, Path(tmp) / "pre.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize(src, out)
        return out.read_bytes()


class _BatchReader:
    """onnxruntime ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def quantize_static(
    onnx_bytes: bytes,
    feeds: Iterable[dict[str, np.ndarray]],
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
    calibrate_method: str = "minmax",
    activation_symmetric: bool = False,
    op_types: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    preprocess: bool = True,
) -> bytes:
    """QDQ int8 with activation ranges calibrated on ``feeds`` (dicts of input name -> array)."""
    quantization = _quantization()
    feeds = list(feeds)
    if not feeds:
        raise NotCalibratedError(
            "static int8 needs calibration batches and got none: the calibration split is empty. "
            "Set quantize.calibration_batches >= 1 with a non-empty train split, or use mode: dynamic_int8."
        )
    method = {"minmax": quantization.CalibrationMethod.MinMax, "entropy": quantization.CalibrationMethod.Entropy,
              "percentile": quantization.CalibrationMethod.Percentile}[calibrate_method]

    def run(excluded: list[str]) -> bytes:
        return _quantize_file(onnx_bytes, preprocess, lambda src, out: quantization.quantize_static(
            str(src), str(out), _BatchReader(feeds), quant_format=quantization.QuantFormat.QDQ,
            per_channel=per_channel, reduce_range=reduce_range, calibrate_method=method,
            activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
            op_types_to_quantize=list(op_types) if op_types else None, nodes_to_exclude=excluded,
            calibration_providers=["CPUExecutionProvider"],
            extra_options={"ActivationSymmetric": activation_symmetric, "WeightSymmetric": True},
        ))

    excluded = list(nodes_to_exclude)
    quantized = run(excluded)
    for _ in range(3):  # each pass can uncover tensors that only an excluded node had hidden
        touching = nodes_touching(onnx_bytes, nonfinite_ranges(quantized))
        if not touching or set(touching) <= set(excluded):
            break
        excluded += [n for n in touching if n not in excluded]
        quantized = run(excluded)
    if left := nonfinite_ranges(quantized):  # e.g. unnamed nodes, which onnxruntime cannot be told to skip
        raise UnsupportedModuleError(
            f"static int8 would quantize {len(left)} tensor(s) whose calibrated range reaches -inf or float32's lowest value "
            f"({', '.join(left[:3])}), which collapses the model, and the nodes around them could not be kept float; "
            "use mode: dynamic_int8, or exclude those nodes with quantize.exclude."
        )
    _warn_if_mostly_float("static int8", quantized)
    kept_float = [n for n in excluded if n not in nodes_to_exclude]
    if kept_float:
        quantized = _with_metadata(quantized, SENTINEL_NODES_KEY, json.dumps(kept_float))
        log.warning(_sentinel_note(kept_float))
    return quantized


SENTINEL_NODES_KEY = "slimtorch.float_for_sentinels"  # metadata of a static int8 graph: the nodes kept float, as JSON


def _sentinel_note(nodes: Sequence[str]) -> str:
    return (f"static int8 kept {len(nodes)} node(s) in float because they read or write tensors that reach -inf or float32's "
            f"lowest value (masked attention scores, log(0)), whose int8 scale would be useless: {', '.join(nodes[:6])}"
            + (f" and {len(nodes) - 6} more" if len(nodes) > 6 else ""))


def _with_metadata(onnx_bytes: bytes, key: str, value: str) -> bytes:
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, key: value})
    return proto.SerializeToString()


def int8_notes(quantized: bytes, what: str) -> list[str]:
    """Report sentences about an int8 graph from this module: most weights left float, nodes kept float for sentinels.

    Example:
        >>> record.notes.extend(int8_notes(quantized, "static int8"))  # doctest: +SKIP
    """
    import onnx

    notes = [note] if (note := weight_coverage(quantized).note(what)) else []
    props = {p.key: p.value for p in onnx.load_from_string(quantized).metadata_props}
    if SENTINEL_NODES_KEY in props:
        notes.append(_sentinel_note(json.loads(props[SENTINEL_NODES_KEY])))
    return notes


# An int8 scale this large means the calibrated range reached a float sentinel (-inf, or torch.finfo(float32).min
# that transformers writes into masked attention scores), not a real activation.
SENTINEL_SCALE = 1e30


def nonfinite_ranges(qdq_bytes: bytes) -> list[str]:
    """Tensors of a QDQ graph whose calibrated int8 scale is infinite or astronomically large (see SENTINEL_SCALE).

    Such a tensor (attention scores under a ``-inf`` or ``finfo.min`` causal mask, T5's ``log(0)`` relative
    positions) quantizes every real value to the same code, so the graph runs but computes nonsense.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(qdq_bytes)
    scales = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.name.endswith("scale") or i.dims == []}
    return [n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 1
            and n.input[1] in scales and not (np.abs(scales[n.input[1]]) < SENTINEL_SCALE).all()]


def nodes_touching(onnx_bytes: bytes, tensors: Sequence[str]) -> list[str]:
    """Names of the nodes of ``onnx_bytes`` that produce or read any of ``tensors``."""
    import onnx

    if not tensors:
        return []
    wanted = set(tensors)
    proto = onnx.load_from_string(onnx_bytes)
    return [n.name for n in proto.graph.node if n.name and wanted & (set(n.input) | set(n.output))]


def convert_fp16(onnx_bytes: bytes, op_block_list: Sequence[str] | None = None) -> bytes:
    """Float16 weights and compute, float32 inputs/outputs (``keep_io_types``)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load_from_string(onnx_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp16 = convert_float_to_float16(proto, keep_io_types=True, op_block_list=list(op_block_list) if op_block_list else None)
    return fp16.SerializeToString()


def embedding_gathers(onnx_bytes: bytes, min_rows: int = 1024) -> list[str]:
    """Names of Gather nodes that look up a 2-D float initializer with at least ``min_rows`` rows."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    tables = {i.name: list(i.dims) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    return [n.name for n in proto.graph.node
            if n.op_type == "Gather" and n.input[0] in tables and tables[n.input[0]][0] >= min_rows]


def block_quantize_embeddings(onnx_bytes: bytes, block_size: int = 32) -> tuple[bytes, list[str]]:
    """4-bit block quantization (``GatherBlockQuantized``) of large embedding tables; other nodes untouched."""
    import onnx

    _quantization()  # MissingExtraError when onnxruntime is absent
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    targets = embedding_gathers(onnx_bytes)
    if not targets:
        return onnx_bytes, []
    proto = onnx.load_from_string(onnx_bytes)
    others = [n.name for n in proto.graph.node if n.name not in targets]
    previous = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").level
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    try:
        quantizer = MatMulNBitsQuantizer(proto, bits=4, block_size=block_size, is_symmetric=False, nodes_to_exclude=others,
                                         op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
        quantizer.process()
    finally:
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(previous)
    model = quantizer.model.model
    _repack_uint4_as_uint8_(model)
    return model.SerializeToString(), targets


def _repack_uint4_as_uint8_(model: Any) -> None:
    """Store ``GatherBlockQuantized`` 4-bit tables as uint8 (two codes a byte, ``bits=4``), not ONNX uint4.

    Same bytes and same results in onnxruntime; tools that read initializers with numpy (size and
    parameter counts) then see plain uint8 instead of the ml_dtypes ``uint4`` type.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "GatherBlockQuantized":
            continue
        for index in (0, 3):  # data, zero_points
            init = inits.get(node.input[index]) if len(node.input) > index else None
            if init is None or init.data_type != onnx.TensorProto.UINT4:
                continue
            codes = numpy_helper.to_array(init).astype(np.uint8)  # (..., D) values 0..15
            packed = codes[..., 0::2] | (codes[..., 1::2] << 4)  # (..., D/2), low nibble first
            model.graph.initializer.remove(init)
            model.graph.initializer.append(numpy_helper.from_array(packed, init.name))
        if not any(a.name == "bits" for a in node.attribute):
            node.attribute.append(helper.make_attribute("bits", 4))

"""Models that run outside eager torch: an ONNX graph executed by onnxruntime or OpenVINO behind an ``nn.Module``.

:class:`OrtModule` keeps the ONNX bytes (its artifact is that file) and runs an
``onnxruntime.InferenceSession`` on numpy, so the measurement code can call it like any model:
``forward(model, x)`` with a tensor or a dict of tensors, torch tensors out. :class:`OpenVINOModule`
does the same with the same ONNX bytes compiled by OpenVINO for the CPU (the ``openvino`` extra).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from slimtorch.artifact import FORMATS, ArtifactFormat
from slimtorch.errors import ArtifactError, MissingExtraError, ShapeMismatchError
from slimtorch.io import atomic_write_bytes, atomic_write_json
from slimtorch.models.onnx_file import check_self_contained
from slimtorch.optional import import_optional

log = logging.getLogger(__name__)

# onnxruntime type strings -> numpy dtypes for the inputs we feed.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def named_feeds(inputs: list[tuple[str, Any]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Map positional/keyword tensors to a graph's named numpy inputs.

    Args:
        inputs: the graph's inputs in order, as ``(name, numpy dtype or None to keep the given one)``.
        args, kwargs: what the model was called with. A missing ``attention_mask`` next to
            ``input_ids`` is all ones (no padding), as in Hugging Face models.

    Raises:
        ShapeMismatchError: an input the graph needs was not given.
    """
    given = dict(zip([name for name, _ in inputs], args))
    given.update(kwargs)
    feeds: dict[str, np.ndarray] = {}
    for name, dtype in inputs:
        if name not in given:
            if name == "attention_mask" and "input_ids" in given:
                given["attention_mask"] = torch.ones_like(torch.as_tensor(given["input_ids"]))
            else:
                raise ShapeMismatchError(
                    f"the ONNX model needs input {name!r}; got {sorted(given)}. Call it with {', '.join(n for n, _ in inputs)}."
                )
        value = given[name]
        array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        feeds[name] = array.astype(dtype or array.dtype, copy=False)
    return feeds


def onnx_initializer_stats(onnx_bytes: bytes) -> dict[str, int]:
    """Weights stored in an ONNX graph: ``{"params": n, "nonzeros": m, "bytes": b}``."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(onnx_bytes)
    params = nonzeros = 0
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        params += array.size
        nonzeros += int(np.count_nonzero(array))
    return {"params": params, "nonzeros": nonzeros, "bytes": len(onnx_bytes)}


def _ort() -> Any:
    return import_optional("onnxruntime", feature="running ONNX models")


class OrtModule(nn.Module):
    """An ONNX model run by onnxruntime, callable like the torch model it came from.

    Args:
        onnx_bytes: the serialized ONNX model (kept; it is what gets saved).
        threads: intra-op threads of the session; set ``model.threads = n`` before timing.
        meta: facts about how the graph was made (``{"quantization": "dynamic_int8", ...}``).

    Example:
        >>> ort_model = OrtModule(export_onnx(model, x))  # doctest: +SKIP
        >>> ort_model(x).shape == model(x).shape           # doctest: +SKIP
    """

    slimtorch_runtime = "onnxruntime"
    slimtorch_format = "onnx"

    def __init__(self, onnx_bytes: bytes, threads: int = 1, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.onnx_bytes = bytes(onnx_bytes)
        self.meta = dict(meta or {})
        self._threads = int(threads)
        self._session: Any = None

    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        if int(value) != self._threads:
            self._threads = int(value)
            self._session = None  # rebuilt lazily with the new thread count

    @property
    def session(self) -> Any:
        if self._session is None:
            ort = _ort()
            options = ort.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._session = ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])
        return self._session

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def size_bytes(self) -> int:
        return len(self.onnx_bytes)

    def feeds(self, *args: Tensor, **kwargs: Tensor) -> dict[str, np.ndarray]:
        """Map positional/keyword tensors to the session's named numpy inputs."""
        return named_feeds([(i.name, _ORT_DTYPES.get(i.type)) for i in self.session.get_inputs()], args, kwargs)

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor:
        outputs = self.session.run(None, self.feeds(*args, **kwargs))
        return torch.from_numpy(np.ascontiguousarray(outputs[0])).float()  # (B, ...) like the torch model

    def initializer_stats(self) -> dict[str, int]:
        """Weights stored in the graph: ``{"params": n, "nonzeros": m, "bytes": b}``."""
        return onnx_initializer_stats(self.onnx_bytes)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None  # sessions cannot be copied; rebuilt on first use
        return state

    def extra_repr(self) -> str:
        return f"onnx_bytes={len(self.onnx_bytes)}, threads={self._threads}, meta={self.meta}"


OPENVINO_EXTRA = "pip install 'slimtorch[openvino]'"
OpenVINOPrecision = Literal["f32", "bf16"]


def openvino() -> Any:
    """The ``openvino`` package, or a :class:`MissingExtraError` that names the extra to install."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise MissingExtraError(f"runtime: openvino needs the OpenVINO runtime, which is not installed: {OPENVINO_EXTRA}.") from exc
    return ov


def openvino_version() -> str:
    """OpenVINO's release, e.g. ``2026.4.1``, read from the installed package's metadata (no import)."""
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError as exc:
        raise MissingExtraError(f"runtime: openvino needs the OpenVINO runtime, which is not installed: {OPENVINO_EXTRA}.") from exc


@functools.lru_cache(maxsize=1)
def _openvino_core() -> Any:
    return openvino().Core()  # one per process: it loads the device plugins


class OpenVINOModule(nn.Module):
    """An ONNX model compiled by OpenVINO for the CPU, callable like the torch model it came from.

    The graph (float, or int8 QDQ from onnxruntime's quantizer, QAT or NNCF) is kept as ONNX bytes,
    which OpenVINO reads directly; that file is also the artifact. Compiled for latency: one stream,
    ``INFERENCE_NUM_THREADS = threads``, and ``INFERENCE_PRECISION_HINT = precision``. OpenVINO's own
    default on CPUs with bf16 instructions is bf16; ``"f32"`` (the default here) keeps float parts exact.

    Args:
        onnx_bytes: the serialized ONNX model.
        threads: OpenVINO inference threads; set ``model.threads = n`` before timing (recompiles).
        precision: ``"f32"`` or ``"bf16"`` for the parts of the graph that are not int8.
        meta: facts about how the graph was made.

    Raises:
        MissingExtraError: on first use when OpenVINO is not installed.

    Example:
        >>> ov_model = OpenVINOModule(export_onnx(model, x))  # doctest: +SKIP
        >>> ov_model(x).shape == model(x).shape                # doctest: +SKIP
    """

    slimtorch_runtime = "openvino"
    slimtorch_format = "openvino"

    def __init__(self, onnx_bytes: bytes, threads: int = 1, precision: OpenVINOPrecision = "f32",
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        if precision not in ("f32", "bf16"):
            raise ValueError(f"OpenVINO precision must be 'f32' or 'bf16'; got {precision!r}.")
        self.onnx_bytes = bytes(onnx_bytes)
        self.precision: OpenVINOPrecision = precision
        self.meta = dict(meta or {})
        self._threads = int(threads)
        self._compiled: Any = None
        self._request: Any = None
        self._inputs: list[tuple[str, Any]] = []  # (name, numpy dtype) per graph input, read once per compile

    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        if int(value) != self._threads:
            self._threads = int(value)
            self._compiled = self._request = None  # recompiled lazily with the new thread count

    @property
    def compiled(self) -> Any:
        """The ``openvino.CompiledModel`` (compiled on first use)."""
        if self._compiled is None:
            core = _openvino_core()
            graph = core.read_model(self.onnx_bytes)
            self._compiled = core.compile_model(graph, "CPU", {
                "INFERENCE_NUM_THREADS": self._threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": self.precision})
            self._request = self._compiled.create_infer_request()
            self._inputs = [(port.get_any_name(), port.get_element_type().to_dtype()) for port in self._compiled.inputs]
        return self._compiled

    @property
    def input_names(self) -> list[str]:
        return [port.get_any_name() for port in self.compiled.inputs]

    @property
    def size_bytes(self) -> int:
        return len(self.onnx_bytes)

    def runtime_facts(self) -> dict[str, Any]:
        """What OpenVINO compiled: its version, the real inference precision and threads, and the layers run in int8."""
        compiled = self.compiled
        layers = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
        weighted = [info for info in layers if info["layerType"].astype(str) in ("Convolution", "FullyConnected", "MatMul")]
        return {"openvino": openvino_version(), "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
                "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")), "weight_layers": len(weighted),
                "int8_weight_layers": sum(info["runtimePrecision"].astype(str) in ("u8", "i8") for info in weighted)}

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor:
        self.compiled  # noqa: B018 - compiles on first use
        outputs = self._request.infer(named_feeds(self._inputs, args, kwargs), share_inputs=True)  # synchronous: inputs outlive it
        return torch.from_numpy(np.ascontiguousarray(outputs[0])).float()  # (B, ...) like the torch model

    def initializer_stats(self) -> dict[str, int]:
        """Weights stored in the ONNX graph: ``{"params": n, "nonzeros": m, "bytes": b}``."""
        return onnx_initializer_stats(self.onnx_bytes)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled"] = state["_request"] = None  # compiled models cannot be copied; recompiled on first use
        state["_inputs"] = []
        return state

    def extra_repr(self) -> str:
        return f"onnx_bytes={len(self.onnx_bytes)}, threads={self._threads}, precision={self.precision}, meta={self.meta}"


def _save_onnx(model: nn.Module, directory: Any) -> None:
    if not isinstance(model, OrtModule):
        raise TypeError(f"the onnx artifact format saves an OrtModule; got {type(model).__name__}.")
    atomic_write_bytes(directory / "model.onnx", model.onnx_bytes)
    atomic_write_json(directory / "onnx_meta.json", {"meta": model.meta, "threads": model.threads})


def _load_onnx(directory: Any, spec: dict[str, Any]) -> nn.Module:
    import json

    path = directory / "model.onnx"
    if not path.is_file():
        raise ArtifactError(f"{directory}/model.onnx is missing; re-run the stage that wrote it.")
    meta_path = directory / "onnx_meta.json"
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{meta_path} is corrupted ({exc}); re-run the stage that wrote it.") from exc
    if not isinstance(info, dict) or not isinstance(info.get("threads", 1), int) or not isinstance(info.get("meta") or {}, dict):
        raise ArtifactError(f"{meta_path} is corrupted: expected {{\"threads\": int, \"meta\": {{...}}}}; re-run the stage that wrote it.")

    onnx_bytes = path.read_bytes()
    check_self_contained(onnx_bytes, path)  # no tensor may make onnxruntime read a file outside model.onnx
    model = OrtModule(onnx_bytes, threads=info.get("threads", 1), meta=info.get("meta"))
    try:
        model.session  # noqa: B018 - parse now so a corrupted file fails at load, not at first call
    except Exception as exc:
        raise ArtifactError(f"{path} is not a valid ONNX model ({str(exc).splitlines()[0]}); re-run the stage that wrote it.") from exc
    return model


def _save_openvino(model: nn.Module, directory: Any) -> None:
    if not isinstance(model, OpenVINOModule):
        raise TypeError(f"the openvino artifact format saves an OpenVINOModule; got {type(model).__name__}.")

    atomic_write_bytes(directory / "model.onnx", model.onnx_bytes)
    atomic_write_json(directory / "openvino_meta.json", {"meta": model.meta, "threads": model.threads, "precision": model.precision})


def _load_openvino(directory: Any, spec: dict[str, Any]) -> nn.Module:
    import json

    path, meta_path = directory / "model.onnx", directory / "openvino_meta.json"
    if not path.is_file():
        raise ArtifactError(f"{directory}/model.onnx is missing; re-run the stage that wrote it.")
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{meta_path} is corrupted ({exc}); re-run the stage that wrote it.") from exc
    if (not isinstance(info, dict) or not isinstance(info.get("threads", 1), int) or not isinstance(info.get("meta") or {}, dict)
            or info.get("precision", "f32") not in ("f32", "bf16")):
        raise ArtifactError(f"{meta_path} is corrupted: expected {{\"threads\": int, \"precision\": \"f32\"|\"bf16\", "
                            "\"meta\": {...}}; re-run the stage that wrote it.")
    model = OpenVINOModule(path.read_bytes(), threads=info.get("threads", 1), precision=info.get("precision", "f32"),
                           meta=info.get("meta"))
    openvino()  # MissingExtraError (not ArtifactError) when the runtime is not installed
    try:
        model.compiled  # noqa: B018 - compile now so a corrupted file fails at load, not at first call
    except Exception as exc:
        first_line = next(iter(str(exc).splitlines()), type(exc).__name__)
        raise ArtifactError(f"{path} is not a model OpenVINO can read ({first_line}); "
                            "re-run the stage that wrote it.") from exc
    return model


def _register_format() -> None:
    if not FORMATS.registered("onnx"):
        FORMATS.register("onnx")(ArtifactFormat(_save_onnx, _load_onnx))
    if not FORMATS.registered("openvino"):
        FORMATS.register("openvino")(ArtifactFormat(_save_openvino, _load_openvino))


_register_format()

"""Models that run outside eager torch: an ONNX graph executed by onnxruntime behind an ``nn.Module``.

:class:`OrtModule` keeps the ONNX bytes (its artifact is that file) and runs an
``onnxruntime.InferenceSession`` on numpy, so the measurement code can call it like any model:
``forward(model, x)`` with a tensor or a dict of tensors, torch tensors out.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slimtorch.errors import MissingExtraError, ShapeMismatchError

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


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
        raise MissingExtraError("running ONNX models needs onnxruntime: pip install onnxruntime.") from exc
    return onnxruntime


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
        inputs = self.session.get_inputs()
        given = dict(zip([i.name for i in inputs], args))
        given.update(kwargs)
        feeds: dict[str, np.ndarray] = {}
        for spec in inputs:
            if spec.name not in given:
                if spec.name == "attention_mask" and "input_ids" in given:
                    given["attention_mask"] = torch.ones_like(torch.as_tensor(given["input_ids"]))
                else:
                    raise ShapeMismatchError(
                        f"the ONNX model needs input {spec.name!r}; got {sorted(given)}. "
                        f"Call it with {', '.join(i.name for i in inputs)}."
                    )
            value = given[spec.name]
            array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            feeds[spec.name] = array.astype(_ORT_DTYPES.get(spec.type, array.dtype), copy=False)
        return feeds

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor:
        outputs = self.session.run(None, self.feeds(*args, **kwargs))
        return torch.from_numpy(np.ascontiguousarray(outputs[0])).float()  # (B, ...) like the torch model

    def initializer_stats(self) -> dict[str, int]:
        """Weights stored in the graph: ``{"params": n, "nonzeros": m, "bytes": b}``."""
        import onnx
        from onnx import numpy_helper

        proto = onnx.load_from_string(self.onnx_bytes)
        params = nonzeros = 0
        for init in proto.graph.initializer:
            array = numpy_helper.to_array(init)
            params += array.size
            nonzeros += int(np.count_nonzero(array))
        return {"params": params, "nonzeros": nonzeros, "bytes": len(self.onnx_bytes)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None  # sessions cannot be copied; rebuilt on first use
        return state

    def extra_repr(self) -> str:
        return f"onnx_bytes={len(self.onnx_bytes)}, threads={self._threads}, meta={self.meta}"


def _save_onnx(model: nn.Module, directory: Any) -> None:
    from slimtorch.io import atomic_write_bytes, atomic_write_json

    atomic_write_bytes(directory / "model.onnx", model.onnx_bytes)
    atomic_write_json(directory / "onnx_meta.json", {"meta": model.meta, "threads": model.threads})


def _load_onnx(directory: Any, spec: dict[str, Any]) -> nn.Module:
    import json

    from slimtorch.errors import ArtifactError

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
    model = OrtModule(path.read_bytes(), threads=info.get("threads", 1), meta=info.get("meta"))
    try:
        model.session  # noqa: B018 - parse now so a corrupted file fails at load, not at first call
    except Exception as exc:
        raise ArtifactError(f"{path} is not a valid ONNX model ({str(exc).splitlines()[0]}); re-run the stage that wrote it.") from exc
    return model


def _register_format() -> None:
    from slimtorch.artifact import FORMATS, ArtifactFormat

    if "onnx" not in FORMATS:
        FORMATS.register("onnx")(ArtifactFormat(_save_onnx, _load_onnx))


_register_format()

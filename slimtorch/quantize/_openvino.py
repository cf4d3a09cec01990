"""Thin adapter over NNCF's post-training quantization (``nncf.quantize``) of an ONNX graph.

NNCF's ONNX backend writes a QDQ graph like onnxruntime's quantizer does, but with its own choices
(OpenVINO's CPU scheme: symmetric int8 weights per channel, activations with ranges from min/max
statistics, fast bias correction), so its result runs in onnxruntime and in OpenVINO alike. Takes and
returns serialized ONNX bytes, as ``_ort.py`` does.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from slimtorch.errors import MissingExtraError, NotCalibratedError
from slimtorch.runtime import OPENVINO_EXTRA, openvino

log = logging.getLogger(__name__)


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise MissingExtraError(f"quantizer: nncf needs NNCF, which is not installed: {OPENVINO_EXTRA}.") from exc
    return nncf


def nncf_version() -> str:
    """NNCF's release, read from the installed package's metadata (no import)."""
    try:
        return importlib.metadata.version("nncf")
    except importlib.metadata.PackageNotFoundError as exc:
        raise MissingExtraError(f"quantizer: nncf needs NNCF, which is not installed: {OPENVINO_EXTRA}.") from exc


def require_extras(runtime: str, quantizer: str) -> None:
    """Fail before any work when ``runtime: openvino`` or ``quantizer: nncf`` lacks its package (MissingExtraError)."""
    if runtime == "openvino":
        openvino()
    if quantizer == "nncf":
        _nncf()


def nncf_quantize(onnx_bytes: bytes, feeds: list[dict[str, np.ndarray]], nodes_to_exclude: Sequence[str] = ()) -> bytes:
    """Int8 QDQ graph from ``nncf.quantize`` with its default preset, calibrated on ``feeds`` (one batch each).

    ``nodes_to_exclude`` (ONNX node names) stay float, through NNCF's ``IgnoredScope``.

    Raises:
        NotCalibratedError: ``feeds`` is empty.
        MissingExtraError: NNCF is not installed.
    """
    nncf = _nncf()
    import onnx

    if not feeds:
        raise NotCalibratedError("quantizer: nncf needs calibration batches and got none: the calibration split is empty. "
                                 "Set quantize.calibration_split to a non-empty split.")
    dataset = nncf.Dataset(feeds)  # each item is already the graph's {input name: array} feed
    logger = logging.getLogger("nncf")
    previous = logger.level
    logger.setLevel(logging.ERROR)  # NNCF logs every statistics pass at INFO
    try:
        # NNCF draws rich progress bars on the console; the stage's record says what ran instead.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            ignored = nncf.IgnoredScope(names=list(nodes_to_exclude)) if nodes_to_exclude else None
            quantized = nncf.quantize(onnx.load_from_string(onnx_bytes), dataset, subset_size=len(feeds), ignored_scope=ignored)
    finally:
        logger.setLevel(previous)
    return quantized.SerializeToString()

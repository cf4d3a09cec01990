"""What a saved ``model.onnx`` may make onnxruntime read: only its own bytes.

An ONNX tensor can name an "external data" file by path (absolute, or ``../``); onnxruntime would read it when
the session is built. slimtorch always writes weights inside ``model.onnx``, so a saved model that points
anywhere else was not written by it, and is refused before a session exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slimtorch.errors import ArtifactError


def _tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_self_contained(onnx_bytes: bytes, path: Path) -> None:
    """Refuse an ONNX model any of whose tensors lives in an external file (outside ``model.onnx`` itself).

    Raises:
        ArtifactError: naming the tensor and the file it points at.
    """
    import onnx
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except DecodeError as exc:
        raise ArtifactError(f"{path} is not a valid ONNX model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                            "re-run the stage that wrote it.") from exc
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise ArtifactError(
                f"{path}: tensor {tensor.name!r} keeps its data in an external file {location!r}; slimtorch saves ONNX weights inside "
                "model.onnx and never reads files a model names, so it was refused. Re-export it with the weights inside "
                "(onnx.save_model(..., save_as_external_data=False))."
            )

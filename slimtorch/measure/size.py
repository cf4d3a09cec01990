"""Bytes on disk of a saved artifact, raw and after general-purpose compression."""

from __future__ import annotations

import lzma
import zlib
from pathlib import Path
from typing import Literal

from slimtorch.errors import ArtifactError

# Files that hold weights (the rest of an artifact is JSON specs, configs and tokenizers).
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".data", ".bin", ".pt", ".pth", ".onnx_data")
_CHUNK = 1 << 20


def dir_size_bytes(directory: str | Path) -> int:
    """Total bytes of all files under ``directory`` (recursively); a single file's own size."""
    path = Path(directory)
    if not path.exists():
        raise ArtifactError(f"cannot measure the size of {path}: it does not exist. Save the model there first.")
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def weight_files(directory: str | Path) -> list[Path]:
    """The weight files of an artifact (all files if none has a known weight suffix)."""
    path = Path(directory)
    if path.is_file():
        return [path]
    files = sorted(f for f in path.rglob("*") if f.is_file())
    weights = [f for f in files if f.name.endswith(WEIGHT_SUFFIXES)]
    return weights or files


def compressed_bytes(directory: str | Path, method: Literal["zlib", "lzma"] = "zlib", level: int = 6) -> int:
    """Bytes of the artifact's weight files after ``zlib`` (default, fast) or ``lzma`` compression.

    Dense formats store a pruned zero at full width; compression is where unstructured sparsity
    pays off on disk. Files are streamed in 1 MiB chunks.
    """
    total = 0
    for f in weight_files(directory):
        comp = zlib.compressobj(level) if method == "zlib" else lzma.LZMACompressor(preset=level)
        with f.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                total += len(comp.compress(chunk))
        total += len(comp.flush())
    return total

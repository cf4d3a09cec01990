"""Atomic file writes (a reader sees the old file or the new one, never half of one) and bounded JSON reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# What ``tempfile.mkstemp``/``mkdtemp`` put between our prefix and suffix: 8 characters of [a-z0-9_].
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _umask() -> int:
    # os.umask can only be read by setting it; put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: str | Path, directory: bool, mask: int | None = None) -> None:
    """mkstemp/mkdtemp create 0600/0700 (private); a finished file gets the permissions open() would give."""
    os.chmod(path, (0o777 if directory else 0o666) & ~(_umask() if mask is None else mask))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _honour_umask(tmp, directory=False)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` in one rename.

    If the block raises, the temporary directory is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None  # nothing to clean up if mkdtemp itself is interrupted
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        yield tmp
        # Writers inside (safetensors, onnx, transformers) may create private files; publish them like open() would.
        mask = _umask()  # read once for the whole tree
        for child in [tmp, *tmp.rglob("*")]:
            if not child.is_symlink():
                _honour_umask(child, directory=child.is_dir(), mask=mask)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        _remove_tree(tmp)


def _remove_tree(tmp: Path | None) -> None:
    """Delete a temporary tree even when Ctrl-C or SIGTERM lands while it is being deleted (then finish, and re-raise)."""
    interrupted: BaseException | None = None
    for _ in range(3):
        try:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def recover_dir(path: Path) -> None:
    """Settle an :func:`atomic_dir` swap that a killed process left half done.

    Between its two renames only ``.<name>.old`` exists: put it back. If both exist, the swap
    finished and the old copy is garbage.
    """
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not old.is_dir():
        return
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, path)


def remove_stale_temporaries(root: Path, subdirs: Iterable[str] | None = None) -> list[Path]:
    """Delete what killed writers left (``.<name>.<random>.tmp``) and settle interrupted dir swaps.

    With ``subdirs``, only ``root`` itself (not recursively) and those sub-folders (recursively) are
    searched: the places slimtorch writes. Only call this on a directory that no other process is
    writing to and that slimtorch owns (``--resume`` of a run, under its lock).
    Returns the paths that were removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    if subdirs is None:
        top, nested = [], list(root.rglob(".*"))
    else:
        top, nested = list(root.glob(".*")), []
        for sub in subdirs:
            if (root / sub).is_dir() and not (root / sub).is_symlink():
                nested.extend((root / sub).rglob(".*"))
    candidates = top + nested
    # Directory swaps happen only inside the owned sub-folders (models/<name>, checkpoints), never at the top.
    olds = [p for p in nested if p.name.endswith(".old") and len(p.name) > len("..old")]
    for old in sorted(olds, key=lambda p: len(p.parts)):
        if old.is_dir() and not old.is_symlink():
            recover_dir(old.with_name(old.name[1:-len(".old")]))
    removed = []
    temps = [p for p in candidates if _TEMP_NAME.match(p.name)]
    for tmp in sorted(temps, key=lambda p: len(p.parts)):
        if not tmp.exists() and not tmp.is_symlink():
            continue  # inside a temporary directory removed just before
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def read_json(path: Path, max_bytes: int, error: type[Exception], fix: str) -> Any:
    """Read a JSON file the tool wrote, refusing one too large or too deeply nested to be ours, with one ``error`` line.

    Args:
        max_bytes: checked before the file is read.
        error: the slimtorch error class to raise (its message ends with ``fix``).
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{path} is {size:,} bytes, over the {max_bytes:,} this file can hold; it is not one slimtorch wrote. {fix[0].upper()}{fix[1:]}.")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {path} ({exc.strerror}); {fix}.") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path} is corrupted (not UTF-8 text at byte {exc.start}); {fix}.") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} is corrupted (not valid JSON: {exc.msg} at line {exc.lineno}); {fix}.") from exc
    except RecursionError as exc:  # nesting thousands deep: a hostile file, not a bug to trace
        raise error(f"{path} is corrupted (JSON nested too deeply to read); {fix}.") from exc

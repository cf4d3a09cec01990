"""Who owns an output directory: a marker slimtorch writes, and an exclusive lock while a run writes.

A run only ever deletes or rewrites what it can prove is its own:

- ``OUT/.slimtorch-run.json`` marks a directory slimtorch created. ``--force`` and ``--resume``
  refuse a directory without it, whatever else it holds (a ``recipe.yaml`` is not proof).
- ``OUT/.slimtorch.lock`` is held with ``flock`` for the whole run. The kernel drops the lock when the
  process exits, however it exits, so a crashed run never leaves a stale lock; a second process on
  the same directory is refused instead of writing a report that describes another run's models.
- ``--force`` empties the directory (keeping the lock file it holds) and ``--resume`` clears only the
  temporaries slimtorch's own writers leave, in the places they write them.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slimtorch.errors import OutputDirError
from slimtorch.io import atomic_write_json, remove_stale_temporaries
from slimtorch.version import __version__

log = logging.getLogger(__name__)

MARKER_FILE = ".slimtorch-run.json"
LOCK_FILE = ".slimtorch.lock"
RECIPE_COPY = "recipe.yaml"  # the run's recipe, written before anything else
# Sub-folders a run writes into; `--resume` cleans temporaries there (recursively) and at the top level only.
OWNED_SUBDIRS = ("models", "work", "variants")


def is_run_dir(path: Path) -> bool:
    """True when ``path`` holds the marker slimtorch writes into every output directory it creates."""
    return (Path(path) / MARKER_FILE).is_file()


@contextmanager
def claim_out_dir(out: str | Path, *, resume: bool, force: bool, kind: str = "run") -> Iterator[Path]:
    """Own ``out`` for the duration of the block: check, lock, clean, mark.

    Raises:
        OutputDirError: ``out`` is a file, belongs to someone else, is used by another slimtorch
            process, or cannot be written.
    """
    out = Path(out)
    _check_before_lock(out, resume=resume, force=force)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot write to output directory {out} ({exc.strerror}); choose a writable --out.") from exc
    lock = _lock(out)
    try:
        if force:
            _empty(out)
        elif resume:
            for path in remove_stale_temporaries(out, subdirs=OWNED_SUBDIRS):
                log.info("removed %s left by an interrupted run", path)
        _mark(out, kind)
        yield out
    finally:
        _unlock(lock)


def _check_before_lock(out: Path, *, resume: bool, force: bool) -> None:
    if out.is_symlink() and force:
        raise OutputDirError(
            f"--force refuses to replace {out}: it is a symbolic link (to {os.readlink(out)}). "
            "Pass the directory it points to, or another --out."
        )
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output path {out} is a file; give a directory path with --out.")
    contents = [p for p in out.iterdir() if p.name != LOCK_FILE] if out.is_dir() else []
    if not contents:
        return
    if is_run_dir(out) and {p.name for p in contents} <= {MARKER_FILE, RECIPE_COPY}:
        return  # a run that stopped before its first stage (e.g. refused data): nothing of it is lost by starting over
    if not resume and not force:
        raise OutputDirError(f"output directory {out} already exists; pass --resume to continue that run or --force to replace it.")
    if not is_run_dir(out):
        flag = "--force" if force else "--resume"
        raise OutputDirError(
            f"{flag} refuses to delete or change anything in {out}: it does not look like a slimtorch run (no {MARKER_FILE}, which slimtorch "
            "writes into every directory it creates), so it may hold your own files. Choose another --out."
        )


def _lock(out: Path) -> int:
    import fcntl

    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OutputDirError(f"cannot write to output directory {out} ({exc.strerror}); choose a writable --out.") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_holder(fd)
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise OutputDirError(
                f"output directory {out} is in use by another slimtorch process{holder}; wait for it to finish, "
                "or choose another --out."
            ) from exc
        raise OutputDirError(f"cannot lock output directory {out} ({exc.strerror}); choose a local, writable --out.") from exc
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": time.time()}).encode())
    except OSError as exc:
        os.close(fd)
        raise OutputDirError(f"cannot write to output directory {out} ({exc.strerror}); choose a writable --out.") from exc
    return fd


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f" (pid {int(info['pid'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _unlock(fd: int) -> None:
    # Closing the descriptor releases the flock; the file stays so a waiting process has one inode to lock.
    os.close(fd)


def _empty(out: Path) -> None:
    """Remove everything in a run directory we hold the lock of, except the lock file itself."""
    for child in out.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _mark(out: Path, kind: str) -> None:
    try:
        if not is_run_dir(out):
            atomic_write_json(out / MARKER_FILE, {"created_by": "slimtorch", "kind": kind, "slimtorch_version": __version__})
    except OSError as exc:
        raise OutputDirError(f"cannot write to output directory {out} ({exc.strerror}); choose a writable --out.") from exc

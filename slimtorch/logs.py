"""Other libraries' log messages: quiet by default during a run, shown with ``--verbose``.

onnxruntime's quantizer logs one INFO line per tensor through the root logger (``logging.info``), and one of
its modules calls ``logging.basicConfig(level=INFO)`` when imported, so an API run that never configured
logging prints hundreds of lines. MLflow, alembic and others keep their own INFO handlers. While
:func:`quiet_library_logs` is active, records below WARNING from those libraries are dropped; slimtorch's own
loggers (``slimtorch.*``) are untouched, and a library logger whose level the user set keeps it.

Example:
    >>> import slimtorch.logs
    >>> slimtorch.logs.show_library_logs(True)  # the API's --verbose: library INFO lines are printed again
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

# Top-level loggers of the libraries a run may import that log below WARNING.
LIBRARY_LOGGERS = (
    "onnxruntime", "onnx", "onnxscript", "torch", "transformers", "peft", "torch_pruning", "nncf", "openvino",
    "neural_compressor", "mlflow", "alembic", "sqlalchemy", "wandb", "tensorboard", "absl", "matplotlib", "PIL",
    "urllib3", "httpx", "git", "filelock", "huggingface_hub", "gguf", "llama_cpp", "databricks", "opentelemetry",
)

_show = False


def show_library_logs(show: bool = True) -> None:
    """Let library messages below WARNING through (the CLI's ``--verbose``); ``False`` quiets them again."""
    global _show
    _show = show


class _RootBelowWarning(logging.Filter):
    """Drops records logged on the root logger itself below WARNING: only libraries do that (slimtorch names its loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def silence_library_logs() -> list[tuple[logging.Logger, int]]:
    """Quiet library messages below WARNING now; returns what :func:`restore_library_logs` puts back."""
    changed: list[tuple[logging.Logger, int]] = []
    if _show:
        return changed
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:  # a level the user set is theirs
            changed.append((logger, logger.level))
            logger.setLevel(logging.WARNING)
    root = logging.getLogger()
    if _ROOT_FILTER not in root.filters:
        root.addFilter(_ROOT_FILTER)
        changed.append((root, -1))  # -1: the filter, not a level, is undone
    _active.append(changed)
    return changed


def restore_library_logs(changed: list[tuple[logging.Logger, int]]) -> None:
    """Undo :func:`silence_library_logs` (levels back, the root filter removed if it added it)."""
    for logger, level in reversed(changed):
        if level == -1:
            logger.removeFilter(_ROOT_FILTER)
        else:
            logger.setLevel(level)
    if changed in _active:
        _active.remove(changed)


def quiet_after_import(name: str) -> None:
    """Quiet ``name`` again after importing a library that sets its own logger's level (MLflow sets ``mlflow`` to INFO)."""
    logger = logging.getLogger(name)
    if _active and not _show and logger.level < logging.WARNING:
        _active[-1].append((logger, logger.level))
        logger.setLevel(logging.WARNING)


@contextmanager
def quiet_library_logs() -> Iterator[None]:
    """Library messages below WARNING are dropped inside the block (unless :func:`show_library_logs` was called)."""
    changed = silence_library_logs()
    try:
        yield
    finally:
        restore_library_logs(changed)


_ROOT_FILTER = _RootBelowWarning()
_active: list[list[tuple[logging.Logger, int]]] = []  # what each open quiet block changed, innermost last

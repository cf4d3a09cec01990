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
        if logger.level == logging.NOTSET or (logger.level < logging.WARNING and _set_by_library(logger)):
            changed.append((logger, logger.level))
            logger.setLevel(logging.WARNING)
    root = logging.getLogger()
    if not any(isinstance(f, _RootBelowWarning) for f in root.filters):
        root.addFilter(_ROOT_FILTER)
    return changed


def restore_library_logs(changed: list[tuple[logging.Logger, int]]) -> None:
    """Undo :func:`silence_library_logs` (levels back, the root filter removed)."""
    for logger, level in changed:
        logger.setLevel(level)
    logging.getLogger().removeFilter(_ROOT_FILTER)


@contextmanager
def quiet_library_logs() -> Iterator[None]:
    """Library messages below WARNING are dropped inside the block (unless :func:`show_library_logs` was called)."""
    if _show:
        yield
        return
    root_had_filter = _ROOT_FILTER in logging.getLogger().filters
    changed = silence_library_logs()
    try:
        yield
    finally:
        for logger, level in changed:
            logger.setLevel(level)
        if not root_had_filter:
            logging.getLogger().removeFilter(_ROOT_FILTER)


_ROOT_FILTER = _RootBelowWarning()

# Libraries that set their own logger to INFO when imported (not the user's choice): mlflow configures "mlflow".
_SELF_CONFIGURED = frozenset({"mlflow"})


def _set_by_library(logger: logging.Logger) -> bool:
    return logger.name in _SELF_CONFIGURED

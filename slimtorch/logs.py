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

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
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


Undo = Callable[[], None]


def silence_library_logs() -> list[Undo]:
    """Quiet library messages below WARNING (and transformers' progress bars) now; :func:`restore_library_logs` undoes it."""
    undo: list[Undo] = []
    if _show:
        return undo
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:  # a level the user set is theirs
            logger.setLevel(logging.WARNING)
            undo.append(functools.partial(logger.setLevel, logging.NOTSET))
    root = logging.getLogger()
    if _ROOT_FILTER not in root.filters:
        root.addFilter(_ROOT_FILTER)
        undo.append(functools.partial(root.removeFilter, _ROOT_FILTER))
    undo += _quiet_progress_bars()
    _active.append(undo)
    return undo


def _quiet_progress_bars() -> list[Undo]:
    """transformers draws a progress bar on stderr for every load and save of a model ("Loading weights")."""
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is not None:
        return []  # the user decided (and huggingface_hub lets the variable win)
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        if not hf_logging.is_progress_bar_enabled():
            return []
        hf_logging.disable_progress_bar()
        return [hf_logging.enable_progress_bar]
    try:  # transformers reads huggingface_hub's setting when it is imported later in the run
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:
        return []
    if are_progress_bars_disabled():
        return []
    disable_progress_bars()

    def undo() -> None:
        late = sys.modules.get("transformers.utils.logging")
        if late is not None:  # imported inside the block: its bars are off because of us
            late.enable_progress_bar()
        enable_progress_bars()

    return [undo]


def restore_library_logs(undo: list[Undo]) -> None:
    """Undo :func:`silence_library_logs`."""
    for step in reversed(undo):
        step()
    if undo in _active:
        _active.remove(undo)


def quiet_after_import(name: str) -> None:
    """Quiet ``name`` again after importing a library that sets its own logger's level (MLflow sets ``mlflow`` to INFO)."""
    logger = logging.getLogger(name)
    if _active and not _show and logger.level < logging.WARNING:
        _active[-1].append(functools.partial(logger.setLevel, logger.level))
        logger.setLevel(logging.WARNING)


@contextmanager
def quiet_library_logs() -> Iterator[None]:
    """Library messages below WARNING are dropped inside the block (unless :func:`show_library_logs` was called)."""
    undo = silence_library_logs()
    try:
        yield
    finally:
        restore_library_logs(undo)


_ROOT_FILTER = _RootBelowWarning()
_active: list[list[Undo]] = []  # how to undo each open quiet block, innermost last

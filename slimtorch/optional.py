"""Optional third-party packages: one place that imports them and names the extra that installs each.

The core install (torch, numpy, pydantic, pyyaml, typer, rich, safetensors) runs a recipe end to end; a feature
that needs more imports its package here, so a missing one fails in one line naming
``pip install 'slimtorch[<extra>]'`` instead of a traceback from deep inside a stage (scikit-learn's
``_optional_dependencies`` does the same).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from slimtorch.errors import MissingExtraError

# top-level package -> the extra that installs it (pyproject.toml's [project.optional-dependencies])
EXTRA_OF: dict[str, str] = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "transformers": "hf",
    "peft": "hf",
    "torch_pruning": "prune",
    "matplotlib": "plots",
    "sklearn": "data",
    "mnist1d": "data",
    "fortune": "data",
    "executorch": "executorch",
}


def install_hint(extra: str) -> str:
    """The pip command that installs ``extra``."""
    return f"pip install 'slimtorch[{extra}]'"


def import_optional(name: str, extra: str | None = None, feature: str | None = None) -> ModuleType:
    """Import ``name`` (a module path such as ``"sklearn.datasets"``), or raise a one-line :class:`MissingExtraError`.

    Args:
        name: the module to import.
        extra: the slimtorch extra that installs it; by default looked up from the top-level package.
        feature: what needs it, for the message (e.g. ``"the digits data source"``); by default the package name.

    Raises:
        MissingExtraError: the package (or one it imports) is not installed.
    """
    top = name.split(".")[0]
    extra = extra or EXTRA_OF.get(top, top)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        # only a missing package is the user's install to fix; an ImportError inside an installed one propagates
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) or missing is None or missing.split(".")[0] == top:
            what = feature or top
            raise MissingExtraError(f"{what} needs {top}, which is not installed: {install_hint(extra)}") from exc
        raise


def available(name: str) -> bool:
    """Whether ``name`` imports (no error raised)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True

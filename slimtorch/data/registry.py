"""The data source registry: a leaf recipes check source names against without loading any data code."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from slimtorch.registry import Registry

# name -> factory(seed=..., **args) returning {"train", "val", "test"[, "transfer"]} datasets. The built-ins
# import on first lookup; a ``package.module:function`` source is called directly.
DATA_SOURCES: Registry[Callable[..., dict[str, Any]]] = Registry("data source", {
    "digits": "slimtorch.data.sources", "mnist1d": "slimtorch.data.sources", "synthetic": "slimtorch.data.sources",
    "text": "slimtorch.data.text",
})


def source_args(source: str) -> list[str]:
    """The ``data.args`` keys a built-in source takes (``seed`` comes from the recipe)."""
    return [n for n in inspect.signature(DATA_SOURCES.get(source)).parameters if n != "seed"]


def unknown_args_message(source: str, args: dict[str, Any]) -> str | None:
    """What is wrong when ``args`` has a key the built-in ``source`` does not take (naming the valid ones), else None."""
    valid = source_args(source)
    unknown = [k for k in args if k not in valid and k != "seed"]
    if not unknown:
        return None
    close = difflib.get_close_matches(str(unknown[0]), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown data.args key {unknown[0]!r} for data source {source!r}.{hint} Valid keys: {', '.join(valid) or 'none'}"

"""Name -> object tables resolved on first lookup: one registry class for every pluggable kind (models, stages,
criteria, losses, data), and the lazy public names of package ``__init__``s."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from slimtorch.errors import RecipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; rejects duplicates and suggests the closest name for unknown ones.

    Example:
        >>> LOSSES = Registry("loss")
        >>> @LOSSES.register("kd")
        ... def kd(): ...
        >>> LOSSES.get("kd") is kd
        True
    """

    def __init__(self, kind: str, builtin: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        # name -> module that registers it when imported: built-ins load on first lookup, not as an
        # import side effect of some package, so any entry point (API, CLI, tests) sees all of them.
        self._builtin = dict(builtin or {})

    def _load(self, name: str) -> None:
        module = self._builtin.get(name)
        if module is not None and name not in self._items:
            importlib.import_module(module)

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            self._load(name)  # a user entry under a built-in name clashes with it, not replaces it
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered; pick another name.")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        self._load(name)
        if name not in self._items:
            raise RecipeError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(known)}."

    def names(self) -> list[str]:
        return sorted({*self._items, *self._builtin})

    def items(self) -> Iterator[tuple[str, T]]:
        """Every (name, object), importing the built-in modules not loaded yet."""
        for name in self.names():
            yield name, self.get(name)

    def registered(self, name: str) -> bool:
        """Whether ``name`` is registered already (without importing its built-in module)."""
        return name in self._items

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._builtin

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# A package such as ``slimtorch.prune`` re-exports ``PruneStage``; importing it eagerly would make any import of
# ``slimtorch.prune.config`` (a leaf recipes need) load the whole engine, since Python runs the parent package's
# ``__init__`` first. Its table is read on first attribute access instead (PEP 562).
def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public ``name`` lives in module ``exports[name]``."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__

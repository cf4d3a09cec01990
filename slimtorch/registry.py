"""One small registry class for every pluggable kind (models, stages, criteria, losses, data)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

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

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered; pick another name.")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise RecipeError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(known)}."

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

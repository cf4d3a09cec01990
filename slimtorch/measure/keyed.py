"""Reading a report.json object into typed fields and writing it back key for key.

A typed fact read from a report keeps the keys it was read with (``key_order``) and any key it does not know, or
whose value is not of the field's type, as it was (``extra``): written back, the object has the same keys in the
same order with the same values, so a report card re-renders to the byte. A fact made in this run
(``key_order`` None) writes its known fields in their declared order, leaving out those that are None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from typing_extensions import Self

Reader = Callable[[Any], Any]  # a JSON value -> the typed value; raises TypeError/ValueError on a value of another type


def number(value: Any) -> float:
    """An int or float as it was read (an int stays an int, so it writes back as one)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected a number; got {type(value).__name__}")


def count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected an integer; got {type(value).__name__}")


def text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string; got {type(value).__name__}")


def mapping_of(read_value: Reader) -> Reader:
    """A reader of ``{"<key>": value}`` objects whose values ``read_value`` accepts."""
    def read_map(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise TypeError(f"expected an object; got {type(value).__name__}")
        return {k: read_value(v) for k, v in value.items()}
    return read_map


def object_of(build: Callable[[dict[str, Any]], Any]) -> Reader:
    """A reader of a nested object typed by ``build`` (a ``from_json``; its ValueError keeps the object as read)."""
    def read_object(value: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object; got {type(value).__name__}")
        return build(value)
    return read_object


def read_keyed(d: Mapping[str, Any], readers: Mapping[str, Reader]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(typed, extra)``: the keys of ``d`` whose reader accepts their value, typed; every other key as it was."""
    typed: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in d.items():
        reader = readers.get(key)
        try:
            if reader is None:
                raise KeyError(key)
            typed[key] = reader(value)
        except (KeyError, TypeError, ValueError):
            extra[key] = value
    return typed, extra


def write_keyed(fields: Mapping[str, Any], extra: Mapping[str, Any], key_order: tuple[str, ...] | None) -> dict[str, Any]:
    """The JSON object of typed ``fields`` (JSON values, declared order) and ``extra``.

    Read from a report (``key_order`` given): exactly the keys it had, in that order (a field None there was null).
    Made in this run: the fields that are not None in declared order, then ``extra``.
    """
    if key_order is None:
        return {**{k: v for k, v in fields.items() if v is not None}, **extra}
    return {k: extra[k] if k in extra else fields[k] for k in key_order if k in extra or k in fields}


def _json_value(value: Any) -> Any:
    """A typed field as report.json holds it: nested facts through their ``to_json``, mappings of them value by value."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


FactsT = TypeVar("FactsT", bound="KeyedFacts")


class KeyedFacts:
    """What a frozen dataclass of report.json facts shares: its fields are named by ``READERS`` (in report.json's
    order), and it carries ``extra`` and ``key_order`` to write back key for key."""

    READERS: ClassVar[dict[str, Reader]]
    extra: dict[str, Any]
    key_order: tuple[str, ...] | None

    if TYPE_CHECKING:
        def __init__(self, **fields: Any) -> None: ...  # each subclass is a dataclass with its own

    def to_json(self) -> dict[str, Any]:
        return write_keyed({k: _json_value(getattr(self, k)) for k in self.READERS}, self.extra, self.key_order)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Self:
        typed, extra = read_keyed(d, cls.READERS)
        return cls(**typed, extra=extra, key_order=tuple(d))


"""Read a recipe strictly: YAML errors and invalid values become one RecipeError naming the line.

An unknown key is reported with its line and the closest valid key, e.g.
``recipe.yaml line 7: unknown key 'temprature' in stages[0].distill. Did you mean 'temperature'?``
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from slimtorch.core import STAGES
from slimtorch.errors import RecipeError
from slimtorch.recipe.schema import Recipe, StageSpec


def load_recipe(source: str | Path | dict[str, Any] | Recipe) -> Recipe:
    """Load a recipe from a YAML path, a YAML string, a dict, or pass a Recipe through.

    Example:
        >>> recipe = load_recipe("examples/digits.yaml")  # doctest: +SKIP
    """
    if isinstance(source, Recipe):
        return source
    if isinstance(source, dict):
        return validate(source)
    text, where = _read(source)
    try:
        _check_bounds(text, where)
        nodes = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_duplicate_keys(nodes, where)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{where}{line}: invalid YAML ({problem}). Check indentation and that `key: value` pairs use a space after ':'.") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: a recipe must be a mapping of keys (name, data, teacher, stages, ...); got {type(raw).__name__}.")
    return validate(raw, nodes=nodes, where=where)


# A recipe is a page of settings. These bounds stop a hostile file (an alias "billion laughs", a list
# nested 20,000 deep) before it can exhaust memory or the stack; no real recipe comes near them.
MAX_RECIPE_BYTES = 1_000_000
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_EXPANDED_CHARS = 2 * MAX_RECIPE_BYTES  # the text of every scalar once aliases are expanded


def _line_of(event: yaml.Event) -> int:
    """The 1-based line where ``event`` starts (the parser marks every event it yields)."""
    assert event.start_mark is not None
    return event.start_mark.line + 1


def _check_bounds(text: str, where: str) -> None:
    """Walk the YAML event stream (no recursion, nothing built) and refuse oversized documents."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{where}: the recipe is larger than {MAX_RECIPE_BYTES // 1000} kB; a recipe holds settings, not data. "
                          "Put data in a data source (data.source: package.module:function).")
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, bytes) it expands to
    stack: list[list[Any]] = [[None, 0, 0]]  # [anchor, values so far, bytes so far] per open collection
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([event.anchor, 1, 0])
            if len(stack) - 1 > MAX_DEPTH:
                line = _line_of(event)
                raise RecipeError(f"{where} line {line}: the recipe nests deeper than {MAX_DEPTH} levels; flatten it.")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, n, size = stack.pop()
            if anchor is not None:
                sizes[anchor] = (n, size)
        elif isinstance(event, yaml.AliasEvent):
            n, size = (1, 0) if event.anchor is None else sizes.get(event.anchor, (1, 0))
        elif isinstance(event, yaml.ScalarEvent):
            n, size = 1, len(event.value)
            if event.anchor is not None:
                sizes[event.anchor] = (n, size)
        else:
            continue
        stack[-1][1] += n
        stack[-1][2] += size
        if stack[-1][1] > MAX_NODES or sum(frame[1] for frame in stack) > MAX_NODES:
            line = _line_of(event)
            raise RecipeError(f"{where} line {line}: the recipe expands to more than {MAX_NODES:,} values (YAML aliases `*name` "
                              "repeat whole blocks); write the values out or use fewer aliases.")
        # Counting values is not enough: one long string aliased many times is few values but gigabytes once expanded.
        if sum(frame[2] for frame in stack) > MAX_EXPANDED_CHARS:
            line = _line_of(event)
            raise RecipeError(f"{where} line {line}: the recipe expands to more than {MAX_EXPANDED_CHARS // 1_000_000} million "
                              "characters (YAML aliases `*name` repeat whole blocks and strings); write the values out or use fewer aliases.")


def _check_duplicate_keys(root: yaml.Node | None, where: str) -> None:
    """A key given twice in one mapping is an error (YAML loaders silently keep the last one)."""
    todo = [root] if root is not None else []
    seen_nodes: set[int] = set()
    while todo:
        node = todo.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in keys:
                        raise RecipeError(
                            f"{where} line {key.start_mark.line + 1}: key {key.value!r} is given twice in one block "
                            f"(first on line {keys[key.value]}); keep one."
                        )
                    keys[key.value] = key.start_mark.line + 1
                todo.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)


def _read(source: str | Path) -> tuple[str, str]:
    path = Path(source)
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))):
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} does not exist. Check the path (examples/ has ready-made recipes).")
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:  # checked before reading: a recipe path may name a multi-gigabyte file
            raise RecipeError(f"recipe file {str(path)!r} is larger than {MAX_RECIPE_BYTES // 1000} kB ({size:,} bytes); a recipe holds "
                              "settings, not data. Put data in a data source (data.source: package.module:function).")
        try:
            return path.read_text(encoding="utf-8"), path.name
        except UnicodeDecodeError as exc:
            raise RecipeError(f"recipe file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from exc
    return str(source), "recipe"


def validate(raw: dict[str, Any], nodes: yaml.Node | None = None, where: str = "recipe") -> Recipe:
    """Validate a recipe mapping; every problem is raised as a RecipeError with location and fix."""
    body = dict(raw)
    stages_raw = body.pop("stages", None) or []
    if not isinstance(stages_raw, list):
        raise RecipeError(_locate(where, nodes, ("stages",)) + ": `stages` must be a list like `- prune: {sparsity: 0.5}`.")
    stages = [_stage(i, entry, nodes, where) for i, entry in enumerate(stages_raw)]
    try:
        return Recipe.model_validate({**body, "stages": stages})
    except ValidationError as exc:
        raise RecipeError(_explain(exc, (), Recipe, nodes, where)) from None


def _stage(i: int, entry: Any, nodes: yaml.Node | None, where: str) -> StageSpec:
    loc = ("stages", i)
    if isinstance(entry, str):
        entry = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise RecipeError(f"{_locate(where, nodes, loc)}: each stage is one `kind: {{settings}}` entry, e.g. `- prune: {{sparsity: 0.5}}`; got {entry!r}.")
    kind, settings = next(iter(entry.items()))
    if kind not in STAGES:
        raise RecipeError(f"{_locate(where, nodes, (*loc, kind), key=True)}: {STAGES.unknown_message(str(kind))}")
    config_cls = STAGES.get(kind).config_cls
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise RecipeError(f"{_locate(where, nodes, (*loc, kind))}: settings of stage {kind!r} must be a mapping; got {settings!r}.")
    try:
        return StageSpec(kind=kind, config=config_cls.model_validate(settings))
    except ValidationError as exc:
        raise RecipeError(_explain(exc, (*loc, kind), config_cls, nodes, where)) from None


def _explain(exc: ValidationError, prefix: tuple[Any, ...], model_cls: type[BaseModel], nodes: yaml.Node | None, where: str) -> str:
    messages = []
    errors = exc.errors()
    # A `X | list[X]` field reports one error per branch; the list branch is noise when a mapping was given.
    errors = [e for e in errors if not any(str(p).startswith("list[") for p in e["loc"])] or errors
    for err in errors[:3]:
        loc = tuple(err["loc"])
        full = (*prefix, *loc)
        dotted = _dotted(full)
        if err["type"] == "extra_forbidden":
            valid = _fields_at(model_cls, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            parent = _dotted(full[:-1]) or "the recipe"
            messages.append(f"{_locate(where, nodes, full, key=True)}: unknown key {loc[-1]!r} in {parent}.{hint} Valid keys: {', '.join(valid)}.")
        elif err["type"] == "missing":
            messages.append(f"{_locate(where, nodes, full[:-1])}: missing required key {dotted!r}.")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict) or "got" in msg else f"; got {got!r}"
            text = f"{msg}{shown}"
            end = "" if text.rstrip().endswith((".", "?", "!", ".)", "?)")) else "."  # validators write whole sentences
            messages.append(f"{_locate(where, nodes, full)}: {dotted or 'recipe'}: {text}{end}")
    return " ".join(messages)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "list[", "union[")) and "ModelSpec" not in str(part):
            out += f".{part}" if out else str(part)
    return out


def _locate(where: str, nodes: yaml.Node | None, loc: tuple[Any, ...], key: bool = False) -> str:
    """``where line N`` for the deepest YAML node the location reaches."""
    node, line = nodes, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                continue
            line = (match[0] if key and part == loc[-1] else match[1]).start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
    return f"{where} line {line}" if line else where


def _fields_at(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Names of the fields valid at ``loc`` inside ``model_cls`` (for 'did you mean')."""
    current: Any = model_cls
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            continue
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (typing.Union, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML text that :func:`load_recipe` reads back to an equal recipe."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)

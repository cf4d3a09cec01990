"""What stays fixed while a student trains: frozen parameters (``distill: {freeze: ['*embeddings*']}``, fnmatch globs on
parameter names) and, with ``use_dropout: false``, its dropout (a pretrained student distilled to match its teacher
closely learns faster without it: measured on all-MiniLM-L6-v2 with one of six layers dropped, 0.9785 instead of 0.9699
cosine after 1,500 steps; docs/PIPELINE.md)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from slimtorch.errors import RecipeError


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: name}`` for parameters known by two names (tied weights, e.g. a causal LM's ``lm_head.weight``
    sharing its embedding table): ``name`` is the one ``model.named_parameters()`` lists."""
    listed = {id(p): n for n, p in model.named_parameters()}
    return {n: listed[id(p)] for n, p in model.named_parameters(remove_duplicate=False) if listed[id(p)] != n}


def frozen_names(model: nn.Module, globs: Sequence[str]) -> list[str]:
    """Names of the parameters of ``model`` that match any of ``globs`` (``fnmatch``, e.g. ``hf.embeddings.*``).

    A glob may name a tied weight by either of its names (``*lm_head*`` or ``*embed_tokens*``); the
    result lists the shared tensor once, by the name ``named_parameters()`` gives it, so freezing one
    freezes both (:func:`tied_aliases` says which).

    Raises:
        RecipeError: a glob matches no parameter (with the closest names), or every parameter would be frozen.
    """
    aliases = tied_aliases(model)
    names = [n for n, _ in model.named_parameters()]
    every = names + list(aliases)
    for glob in globs:
        if not fnmatch.filter(every, glob):
            close = difflib.get_close_matches(glob, every, n=3, cutoff=0.3)
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise RecipeError(
                f"distill.freeze: {glob!r} matches no parameter of the student.{hint} Globs match names from "
                f"model.named_parameters(), e.g. {names[0]!r}; use '*' for any text ('*embeddings*')."
            )
    matched = {aliases.get(n, n) for n in every if any(fnmatch.fnmatchcase(n, g) for g in globs)}
    frozen = [n for n in names if n in matched]
    if frozen and len(frozen) == len(names):
        raise RecipeError(f"distill.freeze {list(globs)} freezes every parameter of the student, so nothing would train; "
                          "freeze a part of it (e.g. '*embeddings*').")
    return frozen


@contextmanager
def frozen(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Turn off ``requires_grad`` of the named parameters while inside (no gradient is even computed for them)."""
    params = dict(model.named_parameters())
    was = {n: params[n].requires_grad for n in names}
    for n in names:
        params[n].requires_grad_(False)
    try:
        yield
    finally:
        for n, flag in was.items():
            params[n].requires_grad_(flag)


@contextmanager
def dropout_off(model: nn.Module, is_off: bool = True) -> Iterator[None]:
    """Set every ``nn.Dropout``'s ``p`` to 0 while inside (when ``is_off``), then restore it.

    Hugging Face attention reads its dropout rate from the same modules, so attention dropout is off too.
    """
    rates = {m: m.p for m in model.modules() if isinstance(m, nn.Dropout)} if is_off else {}
    for m in rates:
        m.p = 0.0
    try:
        yield
    finally:
        for m, rate in rates.items():
            m.p = rate

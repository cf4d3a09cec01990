"""Feature taps (forward hooks that keep a module's output) and width adapters for hint/feature KD."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from slimtorch.errors import RecipeError, ShapeMismatchError


def find_module(model: nn.Module, fqn: str, role: str) -> nn.Module:
    """``model.get_submodule(fqn)`` with an error that lists the closest module names."""
    names = [n for n, _ in model.named_modules() if n]
    if fqn not in names:
        close = difflib.get_close_matches(fqn, names, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise RecipeError(
            f"distill.features: the {role} has no module {fqn!r}.{hint} "
            f"Module names come from model.named_modules(); the {role} has e.g. {', '.join(names[:8])}."
        )
    return model.get_submodule(fqn)


class FeatureTaps:
    """Keep the outputs of named modules during forward passes (tuples: the first element).

    Example:
        >>> taps = FeatureTaps(model, ["net.1"])  # doctest: +SKIP
        >>> model(x); taps.features["net.1"].shape  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, fqns: Sequence[str], role: str = "student") -> None:
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for fqn in fqns:
            module = find_module(model, fqn, role)
            self._handles.append(module.register_forward_hook(self._keeper(fqn)))

    def _keeper(self, fqn: str) -> Callable[[nn.Module, object, Any], None]:
        def keep(module: nn.Module, args: object, output: Any) -> None:
            self.features[fqn] = output[0] if isinstance(output, (tuple, list)) else output

        return keep

    def pop(self) -> dict[str, Tensor]:
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def make_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int], name: str = "") -> nn.Module:
    """A module mapping a student feature to the teacher's shape (batch dim excluded from both).

    Same shape: identity. Only the last dim differs: ``Linear`` (MLP features, transformer hidden
    states (T, H)). Only the channel dim differs on a (C, L) / (C, H, W) map: 1×1 ``Conv1d``/``Conv2d``.

    Raises:
        ShapeMismatchError: any other difference (e.g. spatial sizes), with both shapes.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if s == t:
        return nn.Identity()
    differ = [i for i, (a, b) in enumerate(zip(s, t)) if a != b] if len(s) == len(t) else None
    if differ == [len(s) - 1]:
        return nn.Linear(s[-1], t[-1])
    if differ == [0] and len(s) in (2, 3):
        conv = nn.Conv1d if len(s) == 2 else nn.Conv2d
        return conv(s[0], t[0], kernel_size=1)
    raise ShapeMismatchError(
        f"distill.features {name}: student feature shape {s} cannot be adapted to teacher feature shape {t} "
        "(per example). Adapters change only the width: the last dim (linear) or the channel dim of a conv map "
        "(1×1 conv). Pick modules whose spatial/sequence sizes match."
    )

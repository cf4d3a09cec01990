"""One batch of inputs, and the one rule that turns what a model's ``forward`` returns into a Tensor.

Kept apart from :mod:`slimtorch.core` so data code can use it without depending on the run context.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from slimtorch.device import model_device, to_device
from slimtorch.errors import UnsupportedModuleError

Batch = Tensor | dict[str, Tensor]


# Keys of a dict (or transformers ``ModelOutput``) output that hold the tensor slimtorch uses.
OUTPUT_KEYS = ("logits",)


def forward(model: nn.Module, x: Batch) -> Tensor:
    """Call ``model`` on one input batch, a tensor or a dict of tensors (tokenized text).

    The batch is moved to the model's device first (a no-op when it is there): on a GPU run the teacher
    lives on the GPU while calibration, probes and evaluation read batches from CPU loaders. The result
    goes through :func:`output_tensor`, so training, distillation, pruning and measurement all see one
    Tensor whatever shape of output the model's ``forward`` returns; it stays on the model's device.
    """
    x = to_device(x, model_device(model))
    return output_tensor(model(**x) if isinstance(x, dict) else model(x), model)


def output_tensor(out: Any, model: nn.Module | None = None) -> Tensor:
    """The tensor slimtorch uses from what a model's ``forward`` returned.

    The rule, the same everywhere:

    - a ``Tensor`` is used as it is: logits ``(B, C)``, embeddings ``(B, D)`` or ``(B, T, ...)``;
    - a mapping (a ``dict`` or a transformers ``ModelOutput``) gives its ``"logits"`` entry;
    - a tuple or list (transformers' ``return_dict=False``, torchvision's auxiliary outputs) gives its
      first element.

    Raises:
        UnsupportedModuleError: anything else, e.g. a dict without ``"logits"``; the message names
            what was found.
    """
    found = out
    for _ in range(8):  # nested containers (a tuple of ModelOutputs, ...): a few levels, never a cycle
        if isinstance(found, Tensor):
            return found
        if isinstance(found, Mapping):
            key = next((k for k in OUTPUT_KEYS if k in found), None)
            if key is None:
                break
            found = found[key]
        elif isinstance(found, (tuple, list)) and found:
            found = found[0]
        else:
            break
    who = f"{type(model).__name__}.forward" if model is not None else "the model's forward"
    raise UnsupportedModuleError(
        f"{who} returned {describe_output(out)}; slimtorch uses a Tensor, the 'logits' entry of a dict or "
        "ModelOutput, or the first element of a tuple. Return the logits (or embeddings) tensor, or put it under 'logits'."
    )


def describe_output(out: Any) -> str:
    """A short description of a model output for error messages, e.g. ``a dict with keys ['a', 'b']``."""
    if isinstance(out, Tensor):
        return f"a Tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        key = next((k for k in OUTPUT_KEYS if k in out), None)
        if key is not None:
            return f"a {type(out).__name__} whose {key!r} entry is {describe_output(out[key])}"
        return f"a {type(out).__name__} with keys {sorted(map(str, out))} and no {' or '.join(map(repr, OUTPUT_KEYS))}"
    if isinstance(out, (tuple, list)):
        first = f" whose first element is {describe_output(out[0])}" if out else ""
        return f"an empty {type(out).__name__}" if not out else f"a {type(out).__name__} of {len(out)}{first}"
    return f"{type(out).__name__} {out!r}"[:120]


def batch_len(x: Batch) -> int:
    """Number of examples in a batch."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)



"""Plain facts slimtorch keeps on a model object, read back with ``getattr(model, name, None)``.

- ``slimtorch_spec``: how to rebuild the architecture (written to ``slimtorch.json``);
- ``slimtorch_format``: the artifact format when it is not the default ``torch`` / ``hf``;
- ``slimtorch_quantization``: the settings of a torch-quantized model.

They are set through :func:`tag_` because torch types a module's attributes as tensors or modules.
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def tag_(model: ModuleT, **tags: Any) -> ModuleT:
    """Set ``tags`` (e.g. ``slimtorch_format="hf_pruned"``) as attributes of ``model``, in place; returns it."""
    for name, value in tags.items():
        setattr(model, name, value)
    return model

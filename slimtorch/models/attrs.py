"""Plain (non-tensor) attributes on a module, set through one typed function.

torch types a module's attributes as tensors or modules, so ``model.slimtorch_format = "onnx"`` does not
type-check; :func:`set_attrs_` sets them instead. slimtorch keeps these facts on a model and reads them
back with ``getattr(model, name, None)``:

- ``slimtorch_spec``: how to rebuild the architecture (written to ``slimtorch.json``);
- ``slimtorch_format``: the artifact format when it is not the default ``torch`` / ``hf``;
- ``slimtorch_quantization``: the settings of a torch-quantized model.

Surgery on a transformers model also updates its layers' own settings (``out_features``, head counts,
``layer_idx``) this way.
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def set_attrs_(module: ModuleT, **values: Any) -> ModuleT:
    """Set ``values`` (e.g. ``slimtorch_format="hf_pruned"``) as attributes of ``module``, in place; returns it."""
    for name, value in values.items():
        setattr(module, name, value)
    return module

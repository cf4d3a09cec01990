"""Export a torch model to ONNX with a dynamic batch axis, and check it against torch.

Dict inputs (tokenized text: ``input_ids``/``attention_mask``) also get a dynamic sequence axis.
Pruning masks held as parametrizations are baked in on a copy first, and the exported module is put
in eval mode (the exporter restores the *given* module's training flag on every submodule).
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimtorch.core import Batch, forward, output_tensor
from slimtorch.device import to_device
from slimtorch.errors import UnsupportedModuleError
from slimtorch.measure.modes import eval_mode
from slimtorch.models.attrs import set_attrs_
from slimtorch.optional import import_optional
from slimtorch.runtime import OrtModule

log = logging.getLogger(__name__)

SEQUENCE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def bake_parametrizations_(model: nn.Module) -> nn.Module:
    """Replace every parametrized tensor (e.g. a pruning mask) by its current value, in place."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            # A deep copy shares the generated Parametrized* class with the original, and removing a
            # parametrization deletes the property from that class: give this module its own class first.
            cls = module.__class__
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for name in list(cast(nn.ModuleDict, module.parametrizations).keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with parametrizations baked in; ``model`` itself is untouched."""
    if getattr(model, "slimtorch_runtime", "torch") != "torch":
        raise UnsupportedModuleError(
            f"this model already runs in {model.slimtorch_runtime}; export or quantize the torch model "
            "instead (put the quantize/export stage after the torch stages)."
        )
    out = bake_parametrizations_(copy.deepcopy(model))
    return set_attrs_(out, slimtorch_spec=getattr(model, "slimtorch_spec", None)).eval()


class _KeywordInputs(nn.Module):
    """Adapt ``model(**{name: tensor})`` to the positional calling convention the exporter traces."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: Tensor) -> Tensor:
        return output_tensor(self.model(**dict(zip(self.names, tensors))), self.model)


class _TensorOutput(nn.Module):
    """Export only the tensor slimtorch uses of a model that returns a tuple, dict or ``ModelOutput``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return output_tensor(self.model(x), self.model)


@contextmanager
def mha_fastpath(enabled: bool) -> Iterator[None]:
    """Set ``torch.backends.mha``'s fast-path flag for the block, then restore it."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


@torch.no_grad()
def _returns_tensor(model: nn.Module, example: Tensor) -> bool:
    return isinstance(model(example), Tensor)


def input_names_of(example: Batch) -> list[str]:
    return list(example) if isinstance(example, dict) else ["input"]


def export_onnx(model: nn.Module, example: Batch, opset: int = 17) -> bytes:
    """Serialize ``model`` to ONNX bytes; axis 0 of every input/output is a dynamic batch axis.

    Args:
        model: a torch model (not modified: a baked, eval-mode copy is exported).
        example: one input batch, a tensor ``(B, ...)`` or a dict of ``(B, T)`` tensors.
        opset: ONNX opset version.
    """
    for package in ("onnx", "onnxscript"):  # torch.onnx's exporter builds the graph with both (the `onnx` extra)
        import_optional(package, feature="ONNX export")
    # Exported from the CPU whatever device the run trained on: the graph must not name a GPU.
    module, example = plain_copy(model).to("cpu"), to_device(example, torch.device("cpu"))
    names = input_names_of(example)
    args: tuple[Tensor, ...] = tuple(example[n] for n in names) if isinstance(example, dict) else (example,)
    if isinstance(example, dict):
        module = _KeywordInputs(module, names)
    elif not _returns_tensor(module, example):  # wrapped only when needed, so ONNX node names stay the same
        module = _TensorOutput(module)
    module.eval()  # FIELD-NOTES trap: the exporter restores the given module's training flag everywhere
    dynamic_axes: dict[str, dict[int, str]] = {}
    for name, arg in zip(names, args):
        axes = {0: "batch"}
        if name in SEQUENCE_INPUTS and arg.dim() >= 2:
            axes[1] = "sequence"
        dynamic_axes[name] = axes
    dynamic_axes["output"] = {0: "batch"}
    buffer = io.BytesIO()
    # nn.MultiheadAttention / nn.TransformerEncoderLayer take torch's fused "fast path" in eval mode, whose
    # ops (_native_multi_head_attention, _transformer_encoder_layer_fwd) have no ONNX form; the slow path is the same maths.
    with torch.no_grad(), warnings.catch_warnings(), mha_fastpath(False):
        warnings.simplefilter("ignore")
        try:
            # torch types `f` as a path; the TorchScript exporter (dynamo=False) writes to a file object as well
            torch.onnx.export(module, args, buffer, input_names=names, output_names=["output"],  # type: ignore[arg-type]
                              dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
            raise UnsupportedModuleError(
                f"torch.onnx.export failed for {type(model).__name__}: {str(exc).splitlines()[0]}. "
                "Use a model whose ops ONNX supports, or keep runtime: torch."
            ) from exc
    return buffer.getvalue()


@torch.no_grad()
def max_abs_diff(reference: nn.Module, candidate: nn.Module, example: Batch) -> float:
    """Largest absolute difference between two models' outputs on ``example``."""
    with eval_mode(reference):
        expected = forward(reference, example).float().cpu()
    got = forward(candidate, example).float().cpu()
    if got.shape != expected.shape:
        return float("inf")
    return (got - expected).abs().max().item()


def resize_batch(example: Batch, batch_size: int) -> Batch:
    """Repeat/cut ``example`` to ``batch_size`` rows (checks the batch axis really is dynamic)."""
    def fit(t: Tensor) -> Tensor:
        reps = -(-batch_size // len(t))
        return t.repeat(reps, *[1] * (t.dim() - 1))[:batch_size]

    return {k: fit(v) for k, v in example.items()} if isinstance(example, dict) else fit(example)


def to_ort(model: nn.Module, example: Batch, opset: int = 17, threads: int = 1) -> OrtModule:
    """Export ``model`` and wrap the graph in an :class:`OrtModule`."""
    return OrtModule(export_onnx(model, example, opset), threads=threads, meta={"opset": opset, "precision": "fp32"})

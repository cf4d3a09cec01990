"""Parameter and nonzero counts, seeing through masks, quantized packing and ONNX wrappers.

A weight pruned with a mask — a ``torch.nn.utils.parametrize`` parametrization or a
``torch.nn.utils.prune`` ``weight_orig``/``weight_mask`` pair — is counted through the *effective*
(masked) tensor, so masked entries count as zeros. Dynamically quantized torch modules keep their weights
in packed params (not ``nn.Parameter``) and weight-only layers in buffers (exposed through a
``dequantized_weight()`` method); those are unpacked and counted too. For a model that runs in
onnxruntime the counts come from the ONNX graph's initializers; a program whose weights only its runtime can read (an
ExecuTorch ``.pte``) carries the :class:`SourceCounts` of the torch model it was exported from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimtorch.measure.onnx_graph import onnx_initializers, onnx_model_of


@dataclass(frozen=True)
class SourceCounts:
    """Weights, nonzero weights and MACs per example of the torch model a runtime program was exported from."""

    params: int
    nonzero: int
    macs: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SourceCounts:
        return cls(int(raw["params"]), int(raw["nonzero"]), None if raw.get("macs") is None else int(raw["macs"]))


def source_counts(model: nn.Module) -> SourceCounts | None:
    """The counts a program wrapper carries from its torch source (``model.source_counts``), or None."""
    counts = getattr(model, "source_counts", None)
    return counts if isinstance(counts, SourceCounts) else None


def count_params(model: nn.Module) -> int:
    """Number of weights the model holds (each shared tensor once)."""
    counts = source_counts(model)
    return counts.params if counts is not None else sum(t.numel() for t in _effective_tensors(model))


def count_nonzero(model: nn.Module) -> int:
    """Number of weights that are not exactly zero; masked entries count as zeros."""
    counts = source_counts(model)
    return counts.nonzero if counts is not None else sum(int(torch.count_nonzero(t)) for t in _effective_tensors(model))


def _effective_tensors(model: nn.Module) -> Iterator[Tensor]:
    graph = onnx_model_of(model)
    if graph is not None:
        for array in onnx_initializers(graph):
            yield torch.from_numpy(array.reshape(-1).copy()) if array.dtype != object else torch.zeros(0)
        return
    replaced: set[int] = set()  # ids of raw tensors standing behind an effective one
    effective: list[Tensor] = []
    with torch.no_grad():
        for module in model.modules():
            effective.extend(_masked_weights(module, replaced))
            effective.extend(_quantized_weights(module))
            effective.extend(_buffer_weights(module))
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in replaced or id(p) in seen:
            continue
        seen.add(id(p))
        yield p.detach()
    yield from effective


def _masked_weights(module: nn.Module, replaced: set[int]) -> list[Tensor]:
    out: list[Tensor] = []
    if parametrize.is_parametrized(module):
        for name, plist in cast(nn.ModuleDict, module.parametrizations).items():
            replaced.add(id(plist.original))
            out.append(getattr(module, name).detach())
    for name, p in list(module.named_parameters(recurse=False)):
        if name.endswith("_orig") and hasattr(module, name[: -len("_orig")] + "_mask"):  # torch.nn.utils.prune
            replaced.add(id(p))
            out.append(getattr(module, name[: -len("_orig")]).detach())
    return out


def _buffer_weights(module: nn.Module) -> list[Tensor]:
    """Weights a module keeps in buffers (weight-only int8/int4 layers) and exposes via ``dequantized_weight()``."""
    getter = getattr(module, "dequantized_weight", None)
    if not callable(getter):
        return []
    out = [getter().detach()]
    bias = getattr(module, "bias", None)
    if isinstance(bias, Tensor) and not isinstance(bias, nn.Parameter):
        out.append(bias.detach())
    return out


def _quantized_weights(module: nn.Module) -> list[Tensor]:
    """Weights of torch.ao quantized modules, which are packed and not ``nn.Parameter``s."""
    if not hasattr(module, "_packed_params") and "quantized" not in type(module).__module__:
        return []
    out: list[Tensor] = []
    for attr in ("weight", "bias"):
        getter = getattr(module, attr, None)
        if not callable(getter) or isinstance(getter, nn.Module):
            continue
        try:
            t = getter()
        except (RuntimeError, TypeError, AttributeError):
            continue
        if isinstance(t, Tensor):
            out.append(t.dequantize() if t.is_quantized else t.detach())
    return out

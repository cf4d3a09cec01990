"""Artifact format ``torch_quantized``: int8/int4 weights + scales in safetensors, rebuilt on load.

Layout: ``model.safetensors`` (float tensors of the unquantized layers, and per quantized Linear
``<fqn>.qweight``/``scale``/... tensors) and ``quantization.json`` (config + which modules are
quantized, with their shapes). Loading rebuilds the float architecture from the spec, swaps in empty
quantized modules and fills them; nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from slimtorch.artifact import FORMATS, ArtifactFormat, _is_tied, _rebuild, fit_shapes_
from slimtorch.errors import ArtifactError
from slimtorch.io import atomic_write_json
from slimtorch.quantize import _torch

QUANT_FILE = "quantization.json"


def _dynamic_linear_type() -> type:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return DynamicLinear


def _dynamic_tensors(module: nn.Module) -> dict[str, Tensor]:
    qweight = module.weight()
    out = {"int_weight": qweight.int_repr()}  # stored as <fqn>.dynamic.<key>
    if qweight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        out["scales"] = qweight.q_per_channel_scales().double()
        out["zero_points"] = qweight.q_per_channel_zero_points().long()
        out["axis"] = torch.tensor(qweight.q_per_channel_axis())
    else:
        out["scales"] = torch.tensor(qweight.q_scale(), dtype=torch.float64)
        out["zero_points"] = torch.tensor(qweight.q_zero_point())
    bias = module.bias()
    if bias is not None:
        out["bias"] = bias.detach()
    return out


def _save(model: nn.Module, directory: Path) -> None:
    config = getattr(model, "slimtorch_quantization", {})
    modules: dict[str, dict[str, Any]] = {}
    state: dict[str, Tensor] = {}
    dynamic = _dynamic_linear_type()
    root = model.inner if isinstance(model, _torch.BFloat16Module) else model
    for fqn, module in root.named_modules():
        if isinstance(module, dynamic):
            modules[fqn] = {"kind": "dynamic_int8", "in": module.in_features, "out": module.out_features,
                            "bias": module.bias() is not None}
            state.update({f"{fqn}.dynamic.{k}": v for k, v in _dynamic_tensors(module).items()})
        elif isinstance(module, _torch.WeightOnlyLinear):
            modules[fqn] = {"kind": "weight_only", "in": module.in_features, "out": module.out_features,
                            "bias": module.bias is not None, "bits": module.bits, "group_size": module.group_size}
    for key, value in root.state_dict().items():
        if isinstance(value, Tensor) and "_packed_params" not in key:
            state[key] = value
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(directory / "model.safetensors"))
    atomic_write_json(directory / QUANT_FILE, {"config": config, "modules": modules,
                                               "wrapper": "bf16" if root is not model else None})


def _load(directory: Path, spec: dict[str, Any]) -> nn.Module:
    try:
        info = json.loads((directory / QUANT_FILE).read_text())
        state = load_file(str(directory / "model.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise ArtifactError(f"{directory} is not a complete torch_quantized artifact ({exc}); re-run the quantize stage.") from exc
    model = _rebuild(spec, directory)
    dynamic = [fqn for fqn, entry in info["modules"].items() if entry["kind"] == "dynamic_int8"]
    for fqn, entry in info["modules"].items():
        if entry["kind"] == "weight_only":
            new = _torch.WeightOnlyLinear(entry["in"], entry["out"], entry["bits"], entry["group_size"], entry["bias"])
            _torch.set_submodule(model, fqn, new)
    # Dynamic int8 Linear layers are swapped in after the float weights are loaded: their loader wants float keys.
    plain = {k: v for k, v in state.items() if not any(k.startswith(f + ".") for f in dynamic)}
    fit_shapes_(model, plain)
    if info.get("wrapper") == "bf16":
        model = model.to(torch.bfloat16)
    missing, unexpected = model.load_state_dict(plain, strict=False)
    missing = [k for k in missing if not any(k.startswith(f + ".") for f in dynamic) and not _is_tied(model, k, plain)]
    if missing or unexpected:
        raise ArtifactError(f"{directory}: weights do not match the architecture (missing {missing[:5]}, unexpected {unexpected[:5]}).")
    for fqn in dynamic:
        entry = info["modules"][fqn]
        new = _torch.empty_dynamic_linear(entry["in"], entry["out"], entry["bias"])
        new.set_weight_bias(_make_qweight(state, fqn), state.get(f"{fqn}.dynamic.bias"))
        _torch.set_submodule(model, fqn, new)
    if info.get("wrapper") == "bf16":
        model = _torch.BFloat16Module(model)
    model.slimtorch_format = "torch_quantized"
    model.slimtorch_quantization = info["config"]
    return model


def _make_qweight(state: dict[str, Tensor], fqn: str) -> Tensor:
    key = f"{fqn}.dynamic."
    ints, scales, zeros = state[key + "int_weight"], state[key + "scales"], state[key + "zero_points"]
    if key + "axis" in state:
        return torch._make_per_channel_quantized_tensor(ints, scales, zeros, int(state[key + "axis"]))
    return torch._make_per_tensor_quantized_tensor(ints, float(scales), int(zeros))


if "torch_quantized" not in FORMATS:
    FORMATS.register("torch_quantized")(ArtifactFormat(_save, _load, rebuilds=True))

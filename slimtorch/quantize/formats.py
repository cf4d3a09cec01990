"""Artifact format ``torch_quantized``: int8/int4 weights + scales in safetensors, rebuilt on load.

Layout: ``model.safetensors`` (float tensors of the unquantized layers, and per quantized Linear
``<fqn>.qweight``/``scale``/... tensors; a quantized embedding's under ``<fqn>.table.``, or none when it
reads the table of the quantized ``lm_head`` it is tied to) and ``quantization.json`` (config + which
modules are quantized, with their shapes and ties). Loading rebuilds the float architecture from the spec, swaps in empty
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
from slimtorch.models.attrs import set_attrs_
from slimtorch.quantize import _torch

QUANT_FILE = "quantization.json"


def _dynamic_tensors(module: _torch.DynamicInt8Linear) -> dict[str, Tensor]:
    """A dynamic int8 Linear's tensors, stored as ``<fqn>.dynamic.<key>`` (the layout torch.ao-era artifacts use too)."""
    out = {"int_weight": module.qweight, "zero_points": torch.zeros(module.out_features, dtype=torch.long)}
    if module.per_channel:
        out.update(scales=module.scale.double(), axis=torch.tensor(0))
    else:
        out.update(scales=module.scale[0].double(), zero_points=torch.tensor(0))
    if module.bias is not None:
        out["bias"] = module.bias
    return out


def _save(model: nn.Module, directory: Path) -> None:
    config = getattr(model, "slimtorch_quantization", {})
    modules: dict[str, dict[str, Any]] = {}
    state: dict[str, Tensor] = {}
    root = model.inner if isinstance(model, _torch.BFloat16Module) else model
    for fqn, module in root.named_modules():
        if isinstance(module, _torch.DynamicInt8Linear):
            modules[fqn] = {"kind": "dynamic_int8", "in": module.in_features, "out": module.out_features,
                            "bias": module.bias is not None}
            state.update({f"{fqn}.dynamic.{k}": v for k, v in _dynamic_tensors(module).items()})
        elif isinstance(module, _torch.WeightOnlyEmbedding):
            modules[fqn] = {"kind": "weight_only_embedding", "num": module.num_embeddings, "dim": module.embedding_dim,
                            "bits": module.table.bits, "group_size": module.table.group_size, "tied_to": module.tied_to,
                            "padding_idx": module.padding_idx}
        elif isinstance(module, _torch.WeightOnlyLinear) and not _is_embedding_table(fqn, modules):
            modules[fqn] = {"kind": "weight_only", "in": module.in_features, "out": module.out_features,
                            "bias": module.bias is not None, "bits": module.bits, "group_size": module.group_size,
                            "activations": module.activations}
    for key, value in root.state_dict().items():
        if isinstance(value, Tensor) and not any(key.startswith(f + ".") for f, e in modules.items() if e["kind"] == "dynamic_int8"):
            state[key] = value
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(directory / "model.safetensors"))
    # A Hugging Face model pruned by layer/head/FFN no longer matches the config its reference builds: keep its own.
    hf = getattr(root, "hf", None)
    hf_config = hf.config.to_dict() if hf is not None and hasattr(hf, "config") else None
    atomic_write_json(directory / QUANT_FILE, {"config": config, "modules": modules,
                                               "wrapper": "bf16" if root is not model else None, "hf_config": hf_config})


def _is_embedding_table(fqn: str, modules: dict[str, dict[str, Any]]) -> bool:
    """An embedding's own table (``<embedding>.table``) is saved with the embedding's entry."""
    parent = fqn.rpartition(".")[0]
    return fqn.endswith(".table") and modules.get(parent, {}).get("kind") == "weight_only_embedding"


def _embedding(model: nn.Module, entry: dict[str, Any]) -> _torch.WeightOnlyEmbedding:
    """An empty quantized embedding: its own table, or the (already swapped-in) quantized Linear it is tied to."""
    if entry["tied_to"] is None:
        own = _torch.WeightOnlyLinear(entry["dim"], entry["num"], entry["bits"], entry["group_size"], has_bias=False)
        return _torch.WeightOnlyEmbedding(own, None, entry["padding_idx"])
    table = model.get_submodule(entry["tied_to"])
    if not isinstance(table, _torch.WeightOnlyLinear):
        raise ArtifactError(f"the embedding table is tied to {entry['tied_to']!r}, which is not a quantized Linear in this "
                            "artifact; re-run the quantize stage.")
    return _torch.WeightOnlyEmbedding(table, entry["tied_to"], entry["padding_idx"])


def _with_saved_hf_config(model: nn.Module, saved: dict[str, Any] | None) -> nn.Module:
    """The rebuilt HF model with the saved (possibly pruned) config, keeping its tokenizer and kind."""
    hf = getattr(model, "hf", None)
    if not saved or hf is None or hf.config.to_dict() == saved:
        return model
    config = type(hf.config).from_dict(saved)
    model.hf = type(hf)(config).eval()
    return model


def _load(directory: Path, spec: dict[str, Any]) -> nn.Module:
    try:
        info = json.loads((directory / QUANT_FILE).read_text())
        state = load_file(str(directory / "model.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise ArtifactError(f"{directory} is not a complete torch_quantized artifact ({exc}); re-run the quantize stage.") from exc
    model = _with_saved_hf_config(_rebuild(spec, directory), info.get("hf_config"))
    dynamic = [fqn for fqn, entry in info["modules"].items() if entry["kind"] == "dynamic_int8"]
    for fqn, entry in info["modules"].items():
        if entry["kind"] == "weight_only":
            new = _torch.WeightOnlyLinear(entry["in"], entry["out"], entry["bits"], entry["group_size"], entry["bias"],
                                          entry.get("activations", "bf16"))  # artifacts before int8 activations: bf16
            _torch.set_submodule(model, fqn, new)
    for fqn, entry in info["modules"].items():  # after the Linear layers: a tied table is one of them
        if entry["kind"] == "weight_only_embedding":
            _torch.set_submodule(model, fqn, _embedding(model, entry))
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
        _torch.set_submodule(model, fqn, _dynamic_linear(state, fqn, entry))
    if info.get("wrapper") == "bf16":
        model = _torch.BFloat16Module(model)
    return set_attrs_(model, slimtorch_format="torch_quantized", slimtorch_quantization=info["config"])


def _dynamic_linear(state: dict[str, Tensor], fqn: str, entry: dict[str, Any]) -> _torch.DynamicInt8Linear:
    """Rebuild a dynamic int8 Linear from its stored codes and scales (symmetric: zero points are 0)."""
    key = f"{fqn}.dynamic."
    ints, scales, zeros = state[key + "int_weight"], state[key + "scales"], state[key + "zero_points"]
    if bool((zeros != 0).any()):
        raise ArtifactError(f"{fqn}: dynamic int8 weights with non-zero zero points are not supported; re-run the quantize stage.")
    module = _torch.DynamicInt8Linear(entry["in"], entry["out"], entry["bias"], per_channel=key + "axis" in state)
    with torch.no_grad():
        module.qweight.copy_(ints.to(torch.int8))
        module.scale.copy_(scales.float().expand(entry["out"]))
        if module.bias is not None:  # built with a bias exactly when entry["bias"]
            module.bias.copy_(state[key + "bias"].float())
    return module


if not FORMATS.registered("torch_quantized"):
    FORMATS.register("torch_quantized")(ArtifactFormat(_save, _load, rebuilds=True))

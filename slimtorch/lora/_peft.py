"""Thin adapter over peft: attach LoRA to chosen modules, count trainable weights, merge and unload."""

from __future__ import annotations

import fnmatch
from typing import Any

from torch import nn

from slimtorch.errors import MissingExtraError, UnsupportedModuleError

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
HF_DEFAULT_TARGETS = ("query", "value", "q_proj", "v_proj", "c_attn")


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - peft is a core dependency
        raise MissingExtraError("LoRA needs peft: pip install peft.") from exc
    return peft


def _matches(fqn: str, pattern: str) -> bool:
    return fqn == pattern or fqn.endswith("." + pattern) or fnmatch.fnmatch(fqn, pattern)


def resolve_targets(model: nn.Module, patterns: list[str] | None) -> list[str]:
    """Fully qualified names of the layers LoRA will adapt (peft-supported types only)."""
    layers = {fqn: m for fqn, m in model.named_modules() if isinstance(m, SUPPORTED) and fqn}
    if patterns is None:
        hf = [f for f in layers if any(_matches(f, p) for p in HF_DEFAULT_TARGETS)]
        chosen = hf or [f for f, m in layers.items() if not isinstance(m, nn.Embedding)]
    else:
        chosen = [f for f in layers if any(_matches(f, p) for p in patterns)]
    if not chosen:
        names = ", ".join(list(layers)[:12]) or "none"
        raise UnsupportedModuleError(
            f"lora.target_modules {patterns} matched no Linear/Conv1d/Conv2d/Embedding layer of {type(model).__name__}. "
            f"Layers LoRA can adapt: {names}."
        )
    return chosen


def attach_lora(model: nn.Module, targets: list[str], rank: int, lora_alpha: float, dropout: float) -> nn.Module:
    """Wrap ``model`` in a peft model with LoRA on ``targets``; only the adapters require grad."""
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return peft.get_peft_model(model, config)


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights and return the plain model (every weight trainable again)."""
    plain = peft_model.merge_and_unload(safe_merge=True)
    for p in plain.parameters():
        p.requires_grad_(True)
    return plain

"""Thin adapter over peft: attach LoRA to chosen modules, count trainable weights, merge and unload."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torch.nn import functional as F

from slimtorch.errors import UnsupportedModuleError
from slimtorch.optional import import_optional

if TYPE_CHECKING:
    from peft import PeftModel

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
HF_DEFAULT_TARGETS = ("query", "value", "q_proj", "v_proj", "c_attn")


def _peft() -> Any:
    return import_optional("peft", feature="LoRA")


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


MASK_ATTR = "slimtorch_lora_mask"  # a 0/1 tensor set on a pruned Linear: its LoRA update is masked too


def _masked_linear_class() -> type:
    from peft.tuners.lora.layer import Linear as LoraLinear

    class MaskedLoraLinear(LoraLinear):
        """peft's LoRA Linear whose update ``ΔW = s·B·A`` is multiplied by the layer's pruning mask.

        Training and merging then agree with the sparsity pattern: ``W' = W + ΔW ⊙ M`` has the zeros of ``W``.
        """

        def _mask(self) -> Tensor | None:
            return getattr(self.get_base_layer(), MASK_ATTR, None)

        def get_delta_weight(self, adapter: str) -> Tensor:
            delta = super().get_delta_weight(adapter)
            mask = self._mask()
            return delta if mask is None else delta * mask.to(device=delta.device, dtype=delta.dtype)  # a plain attribute: .to() leaves it behind

        def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            if self._mask() is None or self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x, *args, **kwargs)
            for name in self.active_adapters:
                if name in self.lora_A:
                    result = result + F.linear(self.lora_dropout[name](x), self.get_delta_weight(name).to(x.dtype))
            return result

    return MaskedLoraLinear


def attach_lora_(model: nn.Module, targets: list[str], rank: int, lora_alpha: float, dropout: float,
                masks: dict[str, Tensor] | None = None) -> PeftModel:
    """Wrap ``model`` in a peft model with LoRA on ``targets``; only the adapters require grad.

    ``masks`` (fqn -> 0/1 weight mask of a pruned Linear) restrict those layers' updates to kept weights.
    """
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    masked = {fqn: m for fqn, m in (masks or {}).items() if fqn in targets and isinstance(model.get_submodule(fqn), nn.Linear)}
    if masked:
        config._register_custom_module({nn.Linear: _masked_linear_class()})
        for fqn, mask in masked.items():
            setattr(model.get_submodule(fqn), MASK_ATTR, mask)
    return peft.get_peft_model(model, config)


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora_(peft_model: PeftModel) -> nn.Module:
    """Fold the adapters into the base weights and return the plain model (every weight trainable again)."""
    plain = peft_model.merge_and_unload(safe_merge=True)
    for p in plain.parameters():
        p.requires_grad_(True)
    for module in plain.modules():
        if hasattr(module, MASK_ATTR):
            delattr(module, MASK_ATTR)
    return plain


def inject_lora_(model: nn.Module, targets: list[str], rank: int, lora_alpha: float) -> int:
    """Put LoRA layers into ``model`` itself at ``targets`` (no :class:`PeftModel` wrapper, so the model keeps its type);
    returns the adapter parameter count."""
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=targets, bias="none")
    peft.inject_adapter_in_model(config, model)
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def merge_injected_(model: nn.Module) -> None:
    """Fold every injected LoRA layer into its base layer and put the base layer back in its place."""
    from peft.tuners.lora import LoraLayer

    for fqn, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent, _, name = fqn.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, name, module.get_base_layer())

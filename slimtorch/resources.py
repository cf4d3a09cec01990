"""Resource limits from the recipe's ``resources:`` block, checked before work starts."""

from __future__ import annotations

from torch import nn

from slimtorch.errors import RecipeError


def check_model_fits(model: nn.Module, limits: "ResourceSpec", ref: str) -> None:  # noqa: F821
    """Raise before any training when a model is over the recipe's parameter or memory budget."""
    params = sum(p.numel() for p in model.parameters())
    weight_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    if limits.max_params is not None and params > limits.max_params:
        raise RecipeError(
            f"model {ref!r} has {params:,} parameters, over resources.max_params={limits.max_params:,}. "
            "Pick a smaller model or raise the limit."
        )
    if limits.max_memory_mb is not None and weight_mb > limits.max_memory_mb:
        raise RecipeError(
            f"model {ref!r} needs {weight_mb:.1f} MB for its weights alone, over resources.max_memory_mb={limits.max_memory_mb}. "
            "Pick a smaller model or raise the limit."
        )

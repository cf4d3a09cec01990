"""Recipes: the YAML schema and its strict loader."""

from slimtorch.recipe.load import dump_recipe, load_recipe, validate
from slimtorch.recipe.schema import DataSpec, ModelSpec, Recipe, StageSpec

__all__ = ["DataSpec", "ModelSpec", "Recipe", "StageSpec", "dump_recipe", "load_recipe", "validate"]

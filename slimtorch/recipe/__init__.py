"""Recipes: the YAML schema and its strict loader."""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
    from slimtorch.recipe.load import dump_recipe, load_recipe, validate
    from slimtorch.recipe.schema import DataSpec, ModelSpec, Recipe, StageSpec

# Public name -> module defining it, imported on first use so the schema loads without the loader.
_EXPORTS = {
    "dump_recipe": "slimtorch.recipe.load", "load_recipe": "slimtorch.recipe.load", "validate": "slimtorch.recipe.load",
    "DataSpec": "slimtorch.recipe.schema", "ModelSpec": "slimtorch.recipe.schema", "Recipe": "slimtorch.recipe.schema",
    "StageSpec": "slimtorch.recipe.schema",
}
__all__ = ["DataSpec", "ModelSpec", "Recipe", "StageSpec", "dump_recipe", "load_recipe", "validate"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

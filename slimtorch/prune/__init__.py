"""Pruning: masks at every granularity, structural removal, transformer surgery, lottery tickets."""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
    from slimtorch.prune.config import PruneConfig
    from slimtorch.prune.importance import IMPORTANCE, Importance
    from slimtorch.prune.masks import bake_masks_
    from slimtorch.prune.stage import PruneStage

# Public name -> module defining it, imported on first use so importing a leaf (say a config) of this
# package does not load its engine.
_EXPORTS = {
    "PruneConfig": "slimtorch.prune.config",
    "IMPORTANCE": "slimtorch.prune.importance",
    "Importance": "slimtorch.prune.importance",
    "bake_masks_": "slimtorch.prune.masks",
    "PruneStage": "slimtorch.prune.stage",
}
__all__ = ["IMPORTANCE", "Importance", "PruneConfig", "PruneStage", "bake_masks_"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

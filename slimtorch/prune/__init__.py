"""Pruning: masks at every granularity, structural removal, transformer surgery, lottery tickets."""

from slimtorch.prune.config import PruneConfig
from slimtorch.prune.importance import IMPORTANCE, Importance
from slimtorch.prune.masks import bake_masks_
from slimtorch.prune.stage import PruneStage

__all__ = ["IMPORTANCE", "Importance", "PruneConfig", "PruneStage", "bake_masks_"]

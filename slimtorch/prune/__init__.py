"""Pruning: masks at every granularity, structural removal, transformer surgery, lottery tickets."""

from slimtorch.prune import hf_format as _hf_format  # noqa: F401  (registers the hf_pruned artifact format)
from slimtorch.prune.config import PruneConfig
from slimtorch.prune.importance import IMPORTANCE, Importance
from slimtorch.prune.masks import bake_masks_
from slimtorch.prune.stage import PruneStage

__all__ = ["IMPORTANCE", "Importance", "PruneConfig", "PruneStage", "bake_masks_"]

"""Budget-driven planning: choose pruning ratio and quantization from measured candidates."""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
    from slimtorch.plan.config import TargetConfig
    from slimtorch.plan.search import Plan, plan

# Public name -> module defining it, imported on first use so importing a leaf (say a config) of this
# package does not load its engine.
_EXPORTS = {
    "TargetConfig": "slimtorch.plan.config",
    "Plan": "slimtorch.plan.search",
    "plan": "slimtorch.plan.search",
}
__all__ = ["Plan", "TargetConfig", "plan"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

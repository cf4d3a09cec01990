"""Budget-driven planning: choose pruning ratio and quantization from measured candidates."""

from slimtorch.plan.config import TargetConfig
from slimtorch.plan.search import Plan, plan

__all__ = ["Plan", "TargetConfig", "plan"]

"""Knowledge distillation: Hinton KD, multi-teacher, teaching assistant, feature KD, auto-student, DDP, causal LMs token by token.

The ``distill`` stage registers when a recipe first names it (``slimtorch.core.BUILTIN_STAGES``).
"""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
    from slimtorch.distill.auto_student import derive_student
    from slimtorch.distill.config import AssistantSpec, DDPSpec, DistillConfig, FeatureSpec, TokenSpec
    from slimtorch.distill.losses import LOSSES, kd_loss, soft_cross_entropy
    from slimtorch.distill.stage import DistillStage

# Public name -> module defining it, imported on first use so importing a leaf (say a config) of this
# package does not load its engine.
_EXPORTS = {
    "derive_student": "slimtorch.distill.auto_student",
    "AssistantSpec": "slimtorch.distill.config",
    "DDPSpec": "slimtorch.distill.config",
    "DistillConfig": "slimtorch.distill.config",
    "FeatureSpec": "slimtorch.distill.config",
    "TokenSpec": "slimtorch.distill.config",
    "LOSSES": "slimtorch.distill.losses",
    "kd_loss": "slimtorch.distill.losses",
    "soft_cross_entropy": "slimtorch.distill.losses",
    "DistillStage": "slimtorch.distill.stage",
}
__all__ = [
    "LOSSES",
    "AssistantSpec",
    "DDPSpec",
    "DistillConfig",
    "DistillStage",
    "FeatureSpec",
    "TokenSpec",
    "derive_student",
    "kd_loss",
    "soft_cross_entropy",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

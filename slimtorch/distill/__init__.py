"""Knowledge distillation: Hinton KD, multi-teacher, teaching assistant, feature KD, auto-student, DDP, causal LMs token by token.

Importing this package registers the ``distill`` stage and the ``text`` data source.
"""

from slimtorch.data import text as _text  # noqa: F401 - registers the `text` data source
from slimtorch.distill.auto_student import derive_student
from slimtorch.distill.config import AssistantSpec, DDPSpec, DistillConfig, FeatureSpec, TokenSpec
from slimtorch.distill.losses import LOSSES, kd_loss, soft_cross_entropy
from slimtorch.distill.stage import DistillStage

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

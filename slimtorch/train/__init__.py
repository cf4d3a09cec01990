"""The shared training loop, its schedules, the labeled cross-entropy and the ``finetune`` stage."""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
    from slimtorch.train.config import FinetuneConfig, TrainConfig, train_fields
    from slimtorch.train.loop import FitResult, LossFn, convergence_note, fit
    from slimtorch.train.losses import cross_entropy, labeled_cross_entropy, labeled_cross_entropy_rows
    from slimtorch.train.stage import FinetuneStage

# Public name -> module defining it, imported on first use so importing a leaf (say a config) of this
# package does not load its engine.
_EXPORTS = {
    "FitResult": "slimtorch.train.loop",
    "LossFn": "slimtorch.train.loop",
    "TrainConfig": "slimtorch.train.config",
    "convergence_note": "slimtorch.train.loop",
    "fit": "slimtorch.train.loop",
    "train_fields": "slimtorch.train.config",
    "labeled_cross_entropy": "slimtorch.train.losses",
    "labeled_cross_entropy_rows": "slimtorch.train.losses",
    "FinetuneConfig": "slimtorch.train.config",
    "FinetuneStage": "slimtorch.train.stage",
    "cross_entropy": "slimtorch.train.losses",
}
__all__ = [
    "FinetuneConfig", "FinetuneStage", "FitResult", "LossFn", "TrainConfig", "convergence_note",
    "cross_entropy", "fit", "labeled_cross_entropy", "labeled_cross_entropy_rows", "train_fields",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

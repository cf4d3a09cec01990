"""slimtorch: make a trained PyTorch model smaller and faster, and prove it.

Example:
    >>> import slimtorch
    >>> result = slimtorch.compress("examples/digits.yaml", out="runs/digits")  # doctest: +SKIP
    >>> model = slimtorch.load("runs/digits/models/4_quantize")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module that defines it. Imported on first use (PEP 562) so `slimtorch --version`
# and error paths of the CLI do not pay for transformers/onnxruntime imports.
_EXPORTS = {
    "__version__": "slimtorch.version",
    "compress": "slimtorch.run.pipeline", "RunResult": "slimtorch.run.pipeline",
    "load": "slimtorch.artifact", "save": "slimtorch.artifact",
    "load_recipe": "slimtorch.recipe", "Recipe": "slimtorch.recipe",
    "sweep": "slimtorch.run.sweep", "Report": "slimtorch.report.card",
    "measure_model": "slimtorch.measure", "Measurement": "slimtorch.measure", "EvaluateConfig": "slimtorch.measure",
    "build_model": "slimtorch.models", "build_data": "slimtorch.data",
    "STAGES": "slimtorch.core", "RunContext": "slimtorch.core", "StageRecord": "slimtorch.core",
    "DistillConfig": "slimtorch.distill", "DistillStage": "slimtorch.distill", "derive_student": "slimtorch.distill",
    "PruneConfig": "slimtorch.prune", "PruneStage": "slimtorch.prune",
    "QuantizeConfig": "slimtorch.quantize", "QuantizeStage": "slimtorch.quantize",
    "ExportConfig": "slimtorch.export", "ExportStage": "slimtorch.export",
    "LoraConfig": "slimtorch.lora", "LoraStage": "slimtorch.lora",
    "FinetuneConfig": "slimtorch.train", "FinetuneStage": "slimtorch.train", "TrainConfig": "slimtorch.train",
    "TrackingConfig": "slimtorch.track", "EnergyConfig": "slimtorch.measure.config",
    **{name: "slimtorch.errors" for name in (
        "SlimtorchError", "RecipeError", "DataError", "ModelRefError", "ArtifactError", "UnsupportedModuleError",
        "ShapeMismatchError", "NotCalibratedError", "TrainingError", "OutputDirError", "MissingExtraError", "TrackingError")},
}

__all__ = [*sorted(_EXPORTS)]  # noqa: PLE0604 - built from the table above, all strings


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        # `slimtorch.measure` is the subpackage, so its function is exported as `measure_model` (the one alias).
        value = getattr(module, {"measure_model": "measure"}.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slimtorch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

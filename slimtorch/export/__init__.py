"""ONNX export with a dynamic batch axis and a numerical parity check against torch."""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
    from slimtorch.export.config import ExportConfig
    from slimtorch.export.onnx import bake_parametrizations_, export_onnx, max_abs_diff, to_ort
    from slimtorch.export.stage import ExportStage

# Public name -> module defining it, imported on first use so importing a leaf (say a config) of this
# package does not load its engine.
_EXPORTS = {
    "bake_parametrizations_": "slimtorch.export.onnx",
    "export_onnx": "slimtorch.export.onnx",
    "max_abs_diff": "slimtorch.export.onnx",
    "to_ort": "slimtorch.export.onnx",
    "ExportConfig": "slimtorch.export.config",
    "ExportStage": "slimtorch.export.stage",
}
__all__ = ["ExportConfig", "ExportStage", "bake_parametrizations_", "export_onnx", "max_abs_diff", "to_ort"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

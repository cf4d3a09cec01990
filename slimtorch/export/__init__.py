"""ONNX export with a dynamic batch axis and a numerical parity check against torch."""

from slimtorch.export.onnx import bake_parametrizations_, export_onnx, max_abs_diff, to_ort
from slimtorch.export.stage import ExportConfig, ExportStage

__all__ = ["ExportConfig", "ExportStage", "bake_parametrizations_", "export_onnx", "max_abs_diff", "to_ort"]

"""Quantization: onnxruntime int8/fp16 and torch int8/int4/bf16, with portable artifacts."""

from slimtorch.quantize import formats  # noqa: F401  (registers the "onnx" and "torch_quantized" artifact formats)
from slimtorch.quantize.config import QuantizeConfig
from slimtorch.quantize.stage import QuantizeStage

__all__ = ["QuantizeConfig", "QuantizeStage"]

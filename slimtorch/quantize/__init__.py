"""Quantization: onnxruntime int8/fp16 and torch int8/int4/bf16, with portable artifacts."""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
    from slimtorch.quantize.config import QuantizeConfig
    from slimtorch.quantize.stage import QuantizeStage

# Public name -> module defining it, imported on first use so importing a leaf (say a config) of this
# package does not load its engine.
_EXPORTS = {
    "QuantizeConfig": "slimtorch.quantize.config",
    "QuantizeStage": "slimtorch.quantize.stage",
}
__all__ = ["QuantizeConfig", "QuantizeStage"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

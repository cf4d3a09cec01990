"""LoRA recovery: attach low-rank adapters with peft, train, merge into a plain model."""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
    from slimtorch.lora.config import LoraConfig
    from slimtorch.lora.stage import LoraStage

# Public name -> module defining it, imported on first use so importing a leaf (say a config) of this
# package does not load its engine.
_EXPORTS = {
    "LoraConfig": "slimtorch.lora.config",
    "LoraStage": "slimtorch.lora.stage",
}
__all__ = ["LoraConfig", "LoraStage"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

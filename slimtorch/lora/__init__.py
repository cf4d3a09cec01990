"""LoRA recovery: attach low-rank adapters with peft, train, merge into a plain model."""

from slimtorch.lora.config import LoraConfig
from slimtorch.lora.stage import LoraStage

__all__ = ["LoraConfig", "LoraStage"]

"""Importing this module registers every built-in stage in ``slimtorch.core.STAGES``."""

import slimtorch.distill  # noqa: F401  distill
import slimtorch.export  # noqa: F401  export
import slimtorch.prune  # noqa: F401  prune
import slimtorch.quantize  # noqa: F401  quantize
import slimtorch.train.stage  # noqa: F401  finetune

try:  # LoRA is registered once slimtorch.lora exists
    import slimtorch.lora  # noqa: F401
except ModuleNotFoundError as exc:
    if exc.name != "slimtorch.lora.stage" and "slimtorch.lora" not in str(exc):
        raise

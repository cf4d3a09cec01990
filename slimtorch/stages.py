"""Importing this module registers every built-in stage in ``slimtorch.core.STAGES``."""

import slimtorch.distill
import slimtorch.export
import slimtorch.lora
import slimtorch.prune
import slimtorch.quantize
import slimtorch.train.stage  # noqa: F401  finetune

"""Importing this module registers every built-in stage in ``slimtorch.core.STAGES``."""

import slimtorch.distill  # noqa: F401  distill
import slimtorch.export  # noqa: F401  export
import slimtorch.lora  # noqa: F401  lora
import slimtorch.prune  # noqa: F401  prune
import slimtorch.quantize  # noqa: F401  quantize
import slimtorch.train.stage  # noqa: F401  finetune

"""Importing this module registers every built-in stage in ``slimtorch.core.STAGES``."""

import slimtorch.train.stage  # noqa: F401  finetune

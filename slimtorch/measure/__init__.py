"""Measurement core: every number on the report card is measured on the model itself.

``measure(model, name=..., stage=..., data=..., config=...)`` returns a :class:`Measurement`; the parts
are usable alone: :func:`count_params`, :func:`count_nonzero`, :func:`count_macs`, :func:`time_latency`.
"""

from slimtorch.measure.config import EvaluateConfig, LatencyConfig
from slimtorch.measure.efficiency import lags_mac_cut, speedup_efficiency
from slimtorch.measure.evaluate import check_model_fits_data, outputs_on
from slimtorch.measure.latency import quick_latency_ms, time_latency
from slimtorch.measure.macs import QuickCounts, count_macs, count_macs_noted, layer_macs, quick_counts
from slimtorch.measure.measurement import Measurement
from slimtorch.measure.modes import eval_mode
from slimtorch.measure.params import count_nonzero, count_params
from slimtorch.measure.runner import measure
from slimtorch.measure.size import compressed_bytes, dir_size_bytes

__all__ = [
    "EvaluateConfig",
    "LatencyConfig",
    "Measurement",
    "QuickCounts",
    "check_model_fits_data",
    "compressed_bytes",
    "count_macs",
    "count_macs_noted",
    "count_nonzero",
    "count_params",
    "dir_size_bytes",
    "eval_mode",
    "lags_mac_cut",
    "layer_macs",
    "measure",
    "outputs_on",
    "quick_counts",
    "quick_latency_ms",
    "speedup_efficiency",
    "time_latency",
]

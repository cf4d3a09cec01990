"""Measurement core: every number on the report card is measured on the model itself.

``measure(model, name=..., stage=..., data=..., config=...)`` returns a :class:`Measurement`; the parts
are usable alone: :func:`count_params`, :func:`count_nonzero`, :func:`count_macs`, :func:`time_latency`.
"""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
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

# Public name -> module defining it, imported on first use so importing a leaf (say a config) of this
# package does not load its engine.
_EXPORTS = {
    "EvaluateConfig": "slimtorch.measure.config",
    "LatencyConfig": "slimtorch.measure.config",
    "check_model_fits_data": "slimtorch.measure.evaluate",
    "outputs_on": "slimtorch.measure.evaluate",
    "time_latency": "slimtorch.measure.latency",
    "quick_latency_ms": "slimtorch.measure.latency",
    "lags_mac_cut": "slimtorch.measure.efficiency",
    "speedup_efficiency": "slimtorch.measure.efficiency",
    "QuickCounts": "slimtorch.measure.macs",
    "layer_macs": "slimtorch.measure.macs",
    "quick_counts": "slimtorch.measure.macs",
    "eval_mode": "slimtorch.measure.modes",
    "count_macs": "slimtorch.measure.macs",
    "count_macs_noted": "slimtorch.measure.macs",
    "Measurement": "slimtorch.measure.measurement",
    "count_nonzero": "slimtorch.measure.params",
    "count_params": "slimtorch.measure.params",
    "measure": "slimtorch.measure.runner",
    "compressed_bytes": "slimtorch.measure.size",
    "dir_size_bytes": "slimtorch.measure.size",
}
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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

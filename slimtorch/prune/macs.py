"""Per-layer MAC costs for pruning plans; totals come from :mod:`slimtorch.measure`, so a prune stage's
recorded MACs and params equal the report's columns (attention included)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from slimtorch.core import Batch, batch_len, forward
from slimtorch.prune.masks import weight_of
from slimtorch.prune.targets import is_prunable_type


def layer_macs(model: nn.Module, example: Batch) -> dict[str, dict[str, float]]:
    """fqn -> {"macs": dense MACs per example, "nonzero_macs": MACs of nonzero weights only}."""
    found: dict[str, dict[str, float]] = {}
    n = batch_len(example)

    def hook(fqn: str, module: nn.Module) -> Any:
        def run(_: nn.Module, __: Any, out: Tensor) -> None:
            w = weight_of(module)
            is_conv = isinstance(module, nn.modules.conv._ConvNd)
            fan_in = w[0].numel() if is_conv else (w.shape[0] if type(module).__name__ == "Conv1D" else w.shape[1])
            outputs = out.numel() / n
            density = float((w != 0).float().mean())
            macs = outputs * fan_in
            prev = found.get(fqn, {"macs": 0.0, "nonzero_macs": 0.0})
            found[fqn] = {"macs": prev["macs"] + macs, "nonzero_macs": prev["nonzero_macs"] + macs * density}
        return run

    handles = [m.register_forward_hook(hook(f, m)) for f, m in model.named_modules() if f and is_prunable_type(m)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward(model, example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return found


def count_macs(model: nn.Module, example: Batch) -> dict[str, float]:
    """Per example: ``macs`` as the report counts them (:func:`slimtorch.measure.count_macs`, attention
    included) and ``nonzero_macs``, the Linear/Conv MACs a sparse kernel would skip subtracted."""
    from slimtorch.measure.macs import count_macs as measured_macs

    per_layer = layer_macs(model, example)
    dense = measured_macs(model, example)
    skipped = sum(v["macs"] - v["nonzero_macs"] for v in per_layer.values())
    total = float(dense) if dense is not None else sum(v["macs"] for v in per_layer.values())
    return {"macs": total, "nonzero_macs": total - skipped}


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters and nonzeros exactly as the report counts them (masked weights count as zeros)."""
    from slimtorch.measure.params import count_nonzero
    from slimtorch.measure.params import count_params as measured_params

    return {"params": measured_params(model), "nonzero_params": count_nonzero(model)}


def quick_latency_ms(model: nn.Module, example: Batch, runs: int = 30, warmup: int = 10) -> float:
    """Median wall time of one forward (ms) in eager torch; a quick check, not the report's measurement."""
    import statistics
    import time

    was_training = model.training
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            forward(model, example)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    model.train(was_training)
    return statistics.median(times)

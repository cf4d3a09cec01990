"""A quick multiply-accumulate counter for Linear/Conv layers (attention matmuls are not counted)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from slimtorch.core import Batch, batch_len, forward
from slimtorch.prune.targets import is_prunable_type


def layer_macs(model: nn.Module, example: Batch) -> dict[str, dict[str, float]]:
    """fqn -> {"macs": dense MACs per example, "nonzero_macs": MACs of nonzero weights only}."""
    found: dict[str, dict[str, float]] = {}
    n = batch_len(example)

    def hook(fqn: str, module: nn.Module) -> Any:
        def run(_: nn.Module, __: Any, out: Tensor) -> None:
            w = module.weight
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
    """Totals per example: dense MACs and the MACs a sparse kernel would need."""
    per_layer = layer_macs(model, example)
    return {
        "macs": sum(v["macs"] for v in per_layer.values()),
        "nonzero_macs": sum(v["nonzero_macs"] for v in per_layer.values()),
    }


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters of the effective weights (masked weights count as zeros)."""
    seen: set[int] = set()
    total = nonzero = 0
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if name == "original":
                continue
            if id(p) in seen:
                continue
            seen.add(id(p))
            total, nonzero = total + p.numel(), nonzero + int((p != 0).sum())
        if hasattr(module, "parametrizations"):
            for name in module.parametrizations.keys():
                t = getattr(module, name)
                total, nonzero = total + t.numel(), nonzero + int((t != 0).sum())
    return {"params": total, "nonzero_params": nonzero}


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

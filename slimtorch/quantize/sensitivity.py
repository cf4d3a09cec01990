"""Per-layer quantization sensitivity and accuracy-targeted mixed precision (int8 with some layers in float).

How a layer's cost is measured: *everything int8 but this one layer* (leave-one-out). The metric of
that model minus the metric of the all-int8 model is what keeping the layer in float buys back, in
the presence of every other layer's quantization error, which is the situation ``max_drop`` decides
in. (Quantizing one layer alone instead measures its error in isolation and misses how errors
compound through the network.) The metric is the task metric on the validation split (accuracy, or
cosine to the float model for embeddings); the test split is never seen by the choice. Accuracy on a
few hundred examples moves in steps of one example, so ties are broken by the output error (mean
squared difference to the float model's outputs), which sees changes no argmax does.

``max_drop`` then keeps layers in float, most helpful first, re-quantizing and re-measuring the
actual combination after each one (no additivity is assumed), until the drop against the float
model is within budget or ``max_float_fraction`` of the layers are float. Nodes are ONNX node names
(``/features/features.3/Conv``), which name the torch module they came from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from slimtorch.errors import UnsupportedModuleError
from slimtorch.measure.accuracy import accuracy_of, mean_cosine, predict
from slimtorch.measure.latency import time_latency
from slimtorch.runtime import OrtModule

if TYPE_CHECKING:
    from slimtorch.data.bundle import DataBundle

log = logging.getLogger(__name__)

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

# quantize(nodes kept in float) -> quantized ONNX bytes
QuantizeFn = Callable[[list[str]], bytes]


def weight_layers(onnx_bytes: bytes) -> list[str]:
    """Names of the nodes that carry weights (Conv/Gemm, MatMul with an initializer), in graph order."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    inits = {i.name for i in graph.initializer}
    return [n.name for n in graph.node
            if n.op_type in WEIGHT_OPS and (n.op_type != "MatMul" or any(i in inits for i in n.input))]


@dataclass
class Evaluation:
    """One quantized graph on the validation split."""

    metric: float
    output_mse: float
    onnx_bytes: int


@dataclass
class LayerCost:
    """What keeping one layer in float (all others int8) gives, against the all-int8 model."""

    layer: str
    metric_if_float: float
    metric_gain: float
    output_mse_if_float: float
    extra_bytes: int


@dataclass
class FloatStep:
    """One step of the greedy search: ``layer`` joined the float set; the model was re-measured."""

    layer: str
    float_layers: list[str]
    metric: float
    drop: float
    onnx_bytes: int
    latency_ms: float | None = None


@dataclass
class MixedPrecisionResult:
    """The sensitivity scan and, with a budget, the layers kept in float to meet it."""

    metric_name: str
    reference_metric: float  # float ONNX model on the validation split
    all_int8: Evaluation
    layers: list[LayerCost]
    max_drop: float | None = None
    max_float_layers: int = 0
    steps: list[FloatStep] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    is_met: bool = True
    all_int8_latency_ms: float | None = None
    quantized: bytes = b""
    final_drop: float = math.nan  # drop of the returned graph against the float model

    def __post_init__(self) -> None:
        if math.isnan(self.final_drop):
            self.final_drop = self.all_int8_drop

    @property
    def all_int8_drop(self) -> float:
        return self.reference_metric - self.all_int8.metric

    def to_details(self) -> dict[str, Any]:
        """The JSON the stage records as ``details["quant_sensitivity"]`` (what the report plots)."""
        return {
            "method": "leave-one-out: all layers int8 except the one named; metric on the val split",
            "metric": self.metric_name,
            "reference_metric": round(self.reference_metric, 6),
            "all_int8_metric": round(self.all_int8.metric, 6),
            "all_int8_drop": round(self.all_int8_drop, 6),
            "all_int8_output_mse": round(self.all_int8.output_mse, 6),
            "all_int8_onnx_bytes": self.all_int8.onnx_bytes,
            "all_int8_latency_ms": self.all_int8_latency_ms,
            "max_drop": self.max_drop,
            "max_float_layers": self.max_float_layers,
            "layers": [_rounded(asdict(c)) for c in self.layers],
            "steps": [_rounded(asdict(s)) for s in self.steps],
            "float_layers": list(self.float_layers),
            "final_drop": round(self.final_drop, 6),
            "is_met": self.is_met,
        }

    def notes(self) -> list[str]:
        """Plain sentences for the report: which layers stayed float and what each bought, or why the budget failed.

        Figures are the ones :meth:`to_details` records (rounded to 6 digits), so the notes and report.json agree.
        """
        all_drop = round(self.all_int8_drop, 6)
        if self.max_drop is None:
            worst = max(self.layers, key=lambda c: round(c.metric_gain, 6), default=None)
            return [f"int8 sensitivity scan: all-int8 drop {all_drop:+.4f} {self.metric_name}"
                    + (f"; keeping {worst.layer} float alone would change it by {-round(worst.metric_gain, 6):+.4f}" if worst else "")]
        steps = {s.layer: s for s in self.steps}
        kept = [f"{f} (drop {round(steps[f].drop, 6):.4f}, +{steps[f].onnx_bytes - self.all_int8.onnx_bytes} B)" for f in self.float_layers]
        if self.is_met and not kept:
            return [f"max_drop {self.max_drop}: all layers int8 (val drop {all_drop:.4f})."]
        if self.is_met:
            return [f"max_drop {self.max_drop}: kept in float {', '.join(kept)}; all-int8 drop was {all_drop:.4f}."]
        return [f"max_drop {self.max_drop} not met: all-int8 val drop {all_drop:.4f}, best {round(self.final_drop, 6):.4f} "
                f"with {len(self.float_layers)} of at most {self.max_float_layers} layers in float"
                + (f" ({', '.join(self.float_layers)})" if self.float_layers else "")
                + (f"; tried keeping float {', '.join(self.steps[-1].float_layers)}" if self.steps else "")
                + ". Raise max_float_fraction or max_drop, try calibrate_method: percentile, or use qat."]


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}


class Evaluator:
    """Scores quantized ONNX graphs on the validation split against the float graph's outputs."""

    def __init__(self, fp32: bytes, data: DataBundle, split: str = "val", threads: int = 1) -> None:
        self.data, self.split, self.threads = data, split, threads
        self.reference, self.labels = predict(OrtModule(fp32, threads=threads), data.loader(split))
        self.reference_metric = self._metric(self.reference)

    @property
    def metric_name(self) -> str:
        return "accuracy" if self.data.task == "classification" else "cosine to the float model"

    def _metric(self, outputs: Tensor) -> float:
        if self.data.task == "classification":
            return accuracy_of(outputs, self.labels)
        return mean_cosine(outputs, self.reference)

    def __call__(self, onnx_bytes: bytes) -> Evaluation:
        outputs, _ = predict(OrtModule(onnx_bytes, threads=self.threads), self.data.loader(self.split))
        mse = torch.mean((outputs.float() - self.reference.float()) ** 2).item()
        return Evaluation(self._metric(outputs), mse, len(onnx_bytes))

    def latency_ms(self, onnx_bytes: bytes, batch_size: int = 64) -> float:
        """p50 latency (ms) of one batch of ``batch_size`` test inputs, onnxruntime at ``threads``."""
        example = self.data.example_batch(batch_size)
        return time_latency(OrtModule(onnx_bytes, threads=self.threads), example, warmup=5, repeats=30,
                            threads=self.threads).p50


def scan(quantize: QuantizeFn, layers: list[str], evaluate: Evaluator, base: Evaluation) -> list[LayerCost]:
    """Leave-one-out costs: for each layer, the all-int8 model with only that layer kept in float."""
    costs = []
    for layer in layers:
        got = evaluate(quantize([layer]))
        costs.append(LayerCost(layer, got.metric, got.metric - base.metric, got.output_mse, got.onnx_bytes - base.onnx_bytes))
    return costs


def by_benefit(costs: list[LayerCost]) -> list[str]:
    """Layers in the order the greedy search keeps them float: largest metric gain, then lowest output error."""
    return [c.layer for c in sorted(costs, key=lambda c: (-round(c.metric_gain, 9), c.output_mse_if_float))]


def mixed_precision(
    quantize: QuantizeFn,
    fp32: bytes,
    evaluate: Evaluator,
    *,
    max_drop: float | None,
    max_float_fraction: float,
    time_batch: int | None = 64,
) -> MixedPrecisionResult:
    """Scan every weight layer, then (with ``max_drop``) keep the most sensitive in float until the drop fits.

    Args:
        quantize: ``quantize(float_layers) -> ONNX bytes``, the stage's own quantizer with those nodes excluded.
        fp32: the float ONNX graph (its layers are scanned).
        evaluate: scores a graph on the validation split against ``fp32``.
        max_drop: allowed metric drop against the float graph (e.g. 0.005 = half a point); ``None`` scans only.
        max_float_fraction: at most ``ceil(fraction · layers)`` layers may stay float.
        time_batch: batch size at which each step's latency is timed (``None``: not timed).

    Returns:
        The scan, the steps taken, the float layers, whether the budget was met and the chosen graph.
    """
    layers = weight_layers(fp32)
    if not layers:
        raise UnsupportedModuleError("quantize.max_drop/sensitivity: the ONNX graph has no Conv, Gemm or MatMul layer to scan; "
                                     "remove max_drop (there is nothing to keep in float).")
    all_int8 = quantize([])
    base = evaluate(all_int8)
    cap = min(len(layers), math.ceil(max_float_fraction * len(layers) - 1e-9))
    result = MixedPrecisionResult(evaluate.metric_name, evaluate.reference_metric, base, scan(quantize, layers, evaluate, base),
                                  max_drop=max_drop, max_float_layers=cap, quantized=all_int8)
    if time_batch:
        result.all_int8_latency_ms = round(evaluate.latency_ms(all_int8, time_batch), 4)
    if max_drop is None or result.all_int8_drop <= max_drop + 1e-12:
        return result
    best = (result.all_int8_drop, 0, all_int8)
    chosen: list[str] = []
    for layer in by_benefit(result.layers)[:cap]:
        chosen.append(layer)
        graph = quantize(list(chosen))
        got = evaluate(graph)
        latency = round(evaluate.latency_ms(graph, time_batch), 4) if time_batch else None
        step = FloatStep(layer, list(chosen), got.metric, evaluate.reference_metric - got.metric, got.onnx_bytes, latency)
        result.steps.append(step)
        log.info("kept %s in float: drop %.4f", layer, step.drop)
        if step.drop < best[0] - 1e-12:
            best = (step.drop, len(chosen), graph)
        if step.drop <= max_drop + 1e-12:
            break
    # The best combination tried wins (when the budget is not met, that is the lowest drop seen, with
    # the fewest float layers); every step tried stays in ``steps``.
    result.final_drop, n_float, result.quantized = best
    result.float_layers = chosen[:n_float]
    result.is_met = result.final_drop <= max_drop + 1e-12
    return result

"""Task metrics on the eval split, clean and under Gaussian input noise (robustness)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from slimtorch.core import Batch, batch_len, forward
from slimtorch.errors import DataError
from slimtorch.measure import llm
from slimtorch.measure.accuracy import accuracy_of, agreement, mean_cosine, per_class_accuracy
from slimtorch.measure.config import EvaluateConfig
from slimtorch.measure.modes import eval_mode

if TYPE_CHECKING:
    from slimtorch.data.bundle import DataBundle

NOISE_SEED = 1234  # the same noise for every model, so robustness numbers compare


def eval_batches(data: DataBundle, config: EvaluateConfig) -> list[tuple[Batch, Tensor]]:
    """The eval split's ``(x, y)`` batches, truncated to ``config.max_eval_examples``."""
    batches, seen = [], 0
    cap = config.max_eval_examples
    for x, y in data.loader(config.split):
        n = batch_len(x)
        if cap is not None and seen + n > cap:
            keep = cap - seen
            x = {k: v[:keep] for k, v in x.items()} if isinstance(x, dict) else x[:keep]
            y, n = y[:keep], keep
        if n > 0:
            batches.append((x, torch.as_tensor(y)))
        seen += n
        if cap is not None and seen >= cap:
            break
    return batches


def run_batches(model: nn.Module, batches: list[tuple[Batch, Tensor]], noise: float = 0.0,
                input_std: float = 1.0, seed: int = NOISE_SEED) -> tuple[Tensor, Tensor]:
    """Outputs ``(N, ...)`` and labels ``(N,)``; float inputs get ``noise × input_std`` Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)  # noise is drawn on the CPU: the same noise on every device
    outputs, labels = [], []
    with eval_mode(model), torch.inference_mode():
        for x, y in batches:
            if noise > 0 and isinstance(x, Tensor):
                x = x + noise * input_std * torch.randn(x.shape, generator=gen, dtype=x.dtype)
            outputs.append(forward(model, x).float().cpu())
            labels.append(y)
    return cat_padded(outputs), torch.cat(labels)


def cat_padded(outputs: list[Tensor]) -> Tensor:
    """Concatenate batch outputs; sequence outputs ``(B, T, ...)`` of different T are zero-padded to the longest.

    Zero padding leaves cosine similarity and argmax agreement of the real positions unchanged, as long as
    every model is padded the same way (they see the same batches).
    """
    if outputs and outputs[0].dim() >= 3 and len({o.shape[1] for o in outputs}) > 1:
        longest = max(o.shape[1] for o in outputs)
        outputs = [torch.nn.functional.pad(o, (0, 0) * (o.dim() - 2) + (0, longest - o.shape[1])) for o in outputs]
    return torch.cat(outputs)


def outputs_on(model: nn.Module, data: DataBundle, config: EvaluateConfig) -> Tensor | llm.LLMReference:
    """The model's outputs on the eval split (capped); compute the baseline's once and pass it to ``measure``.

    A causal LM gives its :class:`~slimtorch.measure.llm.LLMReference` instead (full logits of a text set are too big to keep).
    """
    if llm.causal_lm_of(model) is not None:
        return llm.reference_of(model, llm.with_model_tokens(data, model), config)
    outputs, labels = run_batches(model, eval_batches(data, config))
    if data.task == "classification":
        check_outputs_cover_labels(outputs, int(labels.max()) + 1, type(model).__name__)
    return outputs


def check_outputs_cover_labels(outputs: Tensor, num_classes: int, what: str) -> None:
    """Raise when a classifier's outputs ``(N, C)`` have fewer columns than there are classes.

    Raises:
        DataError: the labels go beyond the model's classes (accuracy would silently count them wrong).
    """
    if outputs.dim() == 2 and num_classes > outputs.shape[-1]:
        c = outputs.shape[-1]
        raise DataError(
            f"{what} outputs {c} classes (output shape {tuple(outputs.shape)}) but the labels go up to {num_classes - 1}; "
            f"build the model with num_classes={num_classes}, or keep only labels 0..{c - 1} in the data."
        )


@torch.no_grad()
def check_model_fits_data(model: nn.Module, data: DataBundle, what: str) -> None:
    """One validation batch through ``model`` before any training: its outputs must cover every class.

    Raises:
        DataError: the model outputs fewer classes than the data has (``data.num_classes``).
        UnsupportedModuleError: its forward returns something slimtorch cannot use (see :func:`slimtorch.core.output_tensor`).
    """
    if data.task != "classification" or data.num_classes is None:
        return
    with eval_mode(model):
        x, _ = next(iter(data.loader("val", batch_size=2)))
        check_outputs_cover_labels(forward(model, x), data.num_classes, what)


def input_std(batches: list[tuple[Batch, Tensor]]) -> float | None:
    """Std of all float inputs of the eval split; None for non-float inputs (token ids)."""
    xs = [x for x, _ in batches if isinstance(x, Tensor) and x.is_floating_point()]
    if len(xs) != len(batches) or not xs:
        return None
    return torch.cat([x.flatten() for x in xs]).float().std().item()


def task_metrics(outputs: Tensor, labels: Tensor, task: str, baseline: Tensor | None) -> tuple[dict[str, Any], float | None]:
    """``(metrics, agreement)`` for a classification or embedding task."""
    if task == "classification":
        metrics: dict[str, Any] = {"accuracy": accuracy_of(outputs, labels),
                                   "per_class_accuracy": per_class_accuracy(outputs, labels)}
        return metrics, (agreement(outputs, baseline) if baseline is not None else None)
    cosine = mean_cosine(outputs, baseline) if baseline is not None else None
    return {"cosine": cosine}, cosine


def robustness(model: nn.Module, batches: list[tuple[Batch, Tensor]], levels: list[float], task: str,
               reference: Tensor | None) -> tuple[dict[str, float], list[str]]:
    """``{"noise_<level>": metric}``: accuracy (classification) or cosine to ``reference`` (embedding)."""
    std = input_std(batches)
    if std is None:
        return {}, ["robustness not measured: inputs are not float tensors (e.g. token ids), so Gaussian input noise does not apply."]
    out: dict[str, float] = {}
    for level in levels:
        noisy, labels = run_batches(model, batches, noise=level, input_std=std)
        if task == "classification":
            out[f"noise_{level:g}"] = accuracy_of(noisy, labels)
        elif reference is not None:
            out[f"noise_{level:g}"] = mean_cosine(noisy, reference)
    if task != "classification" and reference is None:
        return {}, ["robustness not measured: an embedding model needs baseline outputs to compare against."]
    return out, []

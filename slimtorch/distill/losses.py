"""Distillation losses: small callables in the ``LOSSES`` registry, each checked against hand computation.

A registered loss is ``loss(student_out, target, labels, config) -> (B,)`` per-example losses, where
``target`` is what :func:`teacher_target` made of the teachers' outputs (mixed soft targets for ``kd``,
a weighted mean output for ``mse``/``cosine``) and ``labels`` may hold ``UNLABELED`` (-1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor
from torch.nn import functional as F

from slimtorch.distill.config import DistillConfig
from slimtorch.registry import Registry
from slimtorch.train.losses import labeled_cross_entropy_rows

DistillLoss = Callable[[Tensor, Tensor, Tensor, DistillConfig], Tensor]
LOSSES: Registry[DistillLoss] = Registry("distillation loss")


def soft_cross_entropy(p: Tensor, q: Tensor, eps: float = 0.0) -> Tensor:
    """``−Σ_k p_k log q_k`` over the last dim, the lecture's distillation loss. p, q (..., K) -> (...)."""
    return -(p * torch.log(q + eps)).sum(-1)


def kl_div(p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p ‖ q) = Σ_k p_k (log p_k − log q_k)``, with 0·log 0 = 0. p, log_q (..., K) -> (...)."""
    return (torch.xlogy(p, p) - p * log_q).sum(-1)


def mix_soft_targets(teacher_logits: Sequence[Tensor], weights: Sequence[float], temperature: float) -> Tensor:
    """Weighted average of the teachers' softened distributions ``Σ_i w_i softmax(z_i / T)``. -> (B, C)."""
    total = float(sum(weights))
    # sum() starts from 0 (typed int); from the first teacher on it is a tensor
    return cast(Tensor, sum(w / total * F.softmax(z / temperature, dim=-1) for z, w in zip(teacher_logits, weights)))


def mix_outputs(teacher_outputs: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Weighted mean of the teachers' raw outputs (logits or embeddings). -> (B, D)."""
    total = float(sum(weights))
    return cast(Tensor, sum(w / total * o for o, w in zip(teacher_outputs, weights)))  # a tensor, as above


def teacher_target(outputs: Sequence[Tensor], weights: Sequence[float], config: DistillConfig) -> Tensor:
    """What the student is trained to match, given every teacher's output on a batch."""
    if config.loss == "kd":
        return mix_soft_targets(outputs, weights, config.temperature)
    return mix_outputs(outputs, weights)


@LOSSES.register("kd")
def kd_loss(student_logits: Tensor, soft_targets: Tensor, labels: Tensor, config: DistillConfig) -> Tensor:
    """Hinton KD: ``λ·CE(y, q_S(1)) + (1 − λ)·T²·KL(p_T(T) ‖ q_S(T))`` as per-example shares. -> (B,).

    The mean of the result over the batch is ``λ·(mean CE over the labeled rows) + (1 − λ)·(mean T²·KL
    over all rows)``: the CE shares come from :func:`~slimtorch.train.labeled_cross_entropy_rows`, so
    unlabeled rows (``UNLABELED``) add no CE and do not dilute the labeled ones. The T² factor keeps the
    soft-target gradients the same size as T changes (they scale as 1/T²).
    """
    t = config.temperature
    log_q = F.log_softmax(student_logits / t, dim=-1)  # (B, C)
    soft = kl_div(soft_targets, log_q) * t * t  # (B,)
    if config.alpha == 0:
        return (1 - config.alpha) * soft
    return config.alpha * labeled_cross_entropy_rows(student_logits, labels) + (1 - config.alpha) * soft


@LOSSES.register("mse")
def mse_loss(student_out: Tensor, target: Tensor, labels: Tensor, config: DistillConfig) -> Tensor:
    """Mean squared error to the teacher's logits (Ba & Caruana 2014) or embeddings. -> (B,)."""
    return (student_out - target).pow(2).flatten(1).mean(-1)


@LOSSES.register("cosine")
def cosine_loss(student_out: Tensor, target: Tensor, labels: Tensor, config: DistillConfig) -> Tensor:
    """``1 − cos(s, t)`` per example, for sentence embeddings (DistilBERT's cosine term). -> (B,)."""
    return 1 - F.cosine_similarity(student_out.flatten(1), target.flatten(1), dim=-1)


def feature_mse(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Hint loss: MSE between an adapted student feature and the teacher's. -> (B,)."""
    return (student_feature - teacher_feature).pow(2).flatten(1).mean(-1)


def distillation_loss(student_out: Tensor, teacher_out: Tensor, labels: Tensor, task: str, temperature: float, alpha: float) -> Tensor:
    """The distillation loss every recovery uses (prune recovery, LoRA), from raw teacher outputs. -> scalar.

    Hinton KD (:func:`kd_loss`, λ = ``alpha``) for class logits of the same shape; ``1 − cos`` otherwise
    (embeddings, or a student whose head differs).
    """
    is_logits = task == "classification" and student_out.shape == teacher_out.shape and student_out.dim() == 2
    config = DistillConfig(temperature=temperature, alpha=alpha, loss="kd" if is_logits else "cosine")
    target = teacher_target([teacher_out], [1.0], config)
    return LOSSES.get(config.loss)(student_out, target, labels, config).mean()

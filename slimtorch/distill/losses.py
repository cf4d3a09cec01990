"""Distillation losses: small callables in the ``LOSSES`` registry, each checked against hand computation.

A registered loss is ``loss(student_out, target, labels, config) -> (B,)`` per-example losses, where
``target`` is what :func:`teacher_target` made of the teachers' outputs (mixed soft targets for ``kd``,
a weighted mean output for ``mse``/``cosine``) and ``labels`` may hold ``UNLABELED`` (-1).

A registered feature loss (``FEATURE_LOSSES``) is ``loss(student_feature, teacher_feature, mask, pair)
-> (B,)``; ``mask`` is the batch's ``attention_mask`` (B, T) for text, so token features (B, T, H)
average over real tokens only, or ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimtorch.batch import Batch, forward
from slimtorch.distill.config import DistillConfig, FeatureSpec
from slimtorch.errors import ShapeMismatchError
from slimtorch.registry import Registry
from slimtorch.train.losses import cross_entropy, labeled_cross_entropy_rows

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
        return mix_soft_targets(outputs, weights, config.temperature_value)
    return mix_outputs(outputs, weights)


@LOSSES.register("kd")
def kd_loss(student_logits: Tensor, soft_targets: Tensor, labels: Tensor, config: DistillConfig) -> Tensor:
    """Hinton KD: ``λ·CE(y, q_S(1)) + (1 − λ)·T²·KL(p_T(T) ‖ q_S(T))`` as per-example shares. -> (B,).

    The mean of the result over the batch is ``λ·(mean CE over the labeled rows) + (1 − λ)·(mean T²·KL
    over all rows)``: the CE shares come from :func:`~slimtorch.train.labeled_cross_entropy_rows`, so
    unlabeled rows (``UNLABELED``) add no CE and do not dilute the labeled ones. The T² factor keeps the
    soft-target gradients the same size as T changes (they scale as 1/T²).
    """
    t, alpha = config.temperature_value, config.alpha_value
    log_q = F.log_softmax(student_logits / t, dim=-1)  # (B, C)
    soft = kl_div(soft_targets, log_q) * t * t  # (B,)
    if alpha == 0:
        return (1 - alpha) * soft
    return alpha * labeled_cross_entropy_rows(student_logits, labels) + (1 - alpha) * soft


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


FeatureLoss = Callable[[Tensor, Tensor, "Tensor | None", FeatureSpec], Tensor]
FEATURE_LOSSES: Registry[FeatureLoss] = Registry("feature loss")


def is_token_feature(feature: Tensor, mask: Tensor | None) -> bool:
    """True for a (B, T, H) feature whose first two dims are the text batch's (B, T) ``attention_mask``."""
    return mask is not None and feature.dim() == 3 and tuple(feature.shape[:2]) == tuple(mask.shape)


def token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real (mask 1) tokens of each example. per_token (B, T), mask (B, T) -> (B,)."""
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum(1) / weights.sum(1).clamp(min=1)


@FEATURE_LOSSES.register("mse")
def feature_mse_loss(student_feature: Tensor, teacher_feature: Tensor, mask: Tensor | None, pair: FeatureSpec) -> Tensor:
    """MSE per example; on token features the mean over real tokens of the per-token MSE (TinyBERT's hidden loss). -> (B,)."""
    if is_token_feature(teacher_feature, mask):
        assert mask is not None
        return token_mean((student_feature - teacher_feature).pow(2).mean(-1), mask)
    return feature_mse(student_feature, teacher_feature)


@FEATURE_LOSSES.register("cosine")
def feature_cosine_loss(student_feature: Tensor, teacher_feature: Tensor, mask: Tensor | None, pair: FeatureSpec) -> Tensor:
    """``1 − cos`` per example; on token features the mean over real tokens of the per-token ``1 − cos``. -> (B,)."""
    if is_token_feature(teacher_feature, mask):
        assert mask is not None
        return token_mean(1 - F.cosine_similarity(student_feature, teacher_feature, dim=-1), mask)
    return 1 - F.cosine_similarity(student_feature.flatten(1), teacher_feature.flatten(1), dim=-1)


def relation_log_probs(x: Tensor, mask: Tensor, heads: int) -> Tensor:
    """MiniLMv2 relation ``log softmax(X_a X_aᵀ / √d)`` per relation head a; padded keys get no weight.

    x (B, T, H) with H divisible by ``heads``, mask (B, T) -> (B, heads, T, T).
    """
    b, t, h = x.shape
    d = h // heads
    xa = x.float().view(b, t, heads, d).transpose(1, 2)  # (B, A, T, d)
    scores = xa @ xa.transpose(-1, -2) / d**0.5  # (B, A, T, T)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


@FEATURE_LOSSES.register("relation")
def relation_loss(student_feature: Tensor, teacher_feature: Tensor, mask: Tensor | None, pair: FeatureSpec) -> Tensor:
    """MiniLMv2 self-attention relation transfer (Wang et al. 2021, https://arxiv.org/abs/2012.15828). -> (B,).

    ``KL(R_T ‖ R_S)`` with ``R = softmax(X Xᵀ / √d)`` per relation head, X a query, key or value
    projection (B, T, H) split into ``pair.relation_heads`` heads; summed over keys, averaged over heads
    and real query tokens. Student and teacher widths may differ (the maps are (T, T)).

    Raises:
        ShapeMismatchError: the feature is not a text token feature, or a width is not divisible by the heads.
    """
    if not is_token_feature(teacher_feature, mask) or not is_token_feature(student_feature, mask):
        raise ShapeMismatchError(
            f"distill.features {pair.student!r}→{pair.teacher!r}: loss 'relation' needs token features (B, T, H) of a text "
            f"batch with an attention_mask; got student {tuple(student_feature.shape)}, teacher {tuple(teacher_feature.shape)}. "
            "Tap a query/key/value projection of a transformer layer, or use loss mse/cosine."
        )
    assert mask is not None
    heads = pair.relation_heads
    for role, feature in (("student", student_feature), ("teacher", teacher_feature)):
        if feature.shape[-1] % heads:
            raise ShapeMismatchError(
                f"distill.features {pair.student!r}→{pair.teacher!r}: the {role}'s width {feature.shape[-1]} is not divisible by "
                f"relation_heads={heads}; pick a number of heads that divides both widths."
            )
    log_t = relation_log_probs(teacher_feature, mask, heads)  # (B, A, T, T)
    log_s = relation_log_probs(student_feature, mask, heads)
    kl = kl_div(log_t.exp(), log_s)  # (B, A, T)
    return token_mean(kl.mean(1), mask)


def masked_token_mean(per_position: Tensor, mask: Tensor) -> Tensor:
    """Mean over every real (mask 1) position of the batch. per_position (B, T), mask (B, T) -> scalar."""
    weights = mask.to(per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp(min=1)


def token_kl(student_logits: Tensor, teacher_log_probs: Tensor, temperature: float) -> Tensor:
    """``KL(p_T ‖ q_S)`` over the full vocabulary at every position, ``q_S = softmax(z_S / T)``. (B, T, V) -> (B, T)."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return kl_div(teacher_log_probs.exp(), log_q)


def top_k_token_kl(student_logits: Tensor, top_log_probs: Tensor, top_ids: Tensor, rest_log_prob: Tensor, temperature: float) -> Tensor:
    """KL to a teacher known by its top-k tokens per position, the other tokens' mass as one bucket. -> (B, T).

    Both distributions are coarsened to k + 1 outcomes, the teacher's k most likely tokens and "any
    other token": ``Σ_{j ∈ top-k} p_j log(p_j / q_j) + p_rest log(p_rest / q_rest)``. Unlike renormalising
    the teacher's top-k (a biased estimate of its distribution, Anshumann et al. 2025,
    https://arxiv.org/abs/2503.16870), the student is still told how much mass lies outside the top-k,
    and its own tail is not pushed to zero. It is a lower bound on the full KL (coarsening never raises
    a KL divergence) and equals it at k = V.

    Args:
        student_logits: (B, T, V).
        top_log_probs: (B, T, k) the teacher's log-probabilities (at ``temperature``) of ``top_ids`` (B, T, k).
        rest_log_prob: (B, T) log of the teacher's mass on every other token (-inf at k = V).
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, T, V)
    ids = top_ids.long()
    kl = kl_div(top_log_probs.exp(), log_q.gather(-1, ids))  # (B, T)
    if ids.shape[-1] < log_q.shape[-1]:  # at k = V there is no rest (and its log-sum would be of nothing)
        log_q_rest = log_q.scatter(-1, ids, float("-inf")).logsumexp(-1)  # (B, T): the student's mass off the top-k
        p_rest = rest_log_prob.exp()
        kl = kl + torch.xlogy(p_rest, p_rest) - p_rest * log_q_rest
    return kl


def next_token_ce(student_logits: Tensor, input_ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy of each real next token (the language-modelling loss). -> (ce (B, T), scored (B, T)).

    Position t predicts token t + 1: the last position, and any whose token or next token is padding,
    score nothing (``scored`` 0, ``ce`` 0 there).
    """
    ce = F.cross_entropy(student_logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none")  # (B, T-1)
    scored = F.pad(mask[:, 1:] * mask[:, :-1], (0, 1))  # (B, T)
    return F.pad(ce, (0, 1)) * scored.to(ce.dtype), scored


def distillation_loss(student_out: Tensor, teacher_out: Tensor, labels: Tensor, task: str, temperature: float, alpha: float) -> Tensor:
    """The distillation loss every recovery uses (prune recovery, LoRA), from raw teacher outputs. -> scalar.

    Hinton KD (:func:`kd_loss`, λ = ``alpha``) for class logits of the same shape; ``1 − cos`` otherwise
    (embeddings, or a student whose head differs).
    """
    is_logits = task == "classification" and student_out.shape == teacher_out.shape and student_out.dim() == 2
    config = DistillConfig(temperature=temperature, alpha=alpha, loss="kd" if is_logits else "cosine")
    target = teacher_target([teacher_out], [1.0], config)
    return LOSSES.get(config.loss)(student_out, target, labels, config).mean()


def recovery_loss(teacher: nn.Module | None, task: str, temperature: float, alpha: float) -> Callable[[nn.Module, Batch, Tensor], Tensor]:
    """The training loss of every recovery (prune recovery, lottery retraining, LoRA, finetune): with a
    ``teacher``, :func:`distillation_loss` against its outputs (computed without gradients; the caller puts it in
    eval mode); without one, cross-entropy on the labeled rows.
    """
    if teacher is None:
        return cross_entropy

    def distilled(model: nn.Module, x: Batch, y: Tensor) -> Tensor:
        with torch.no_grad():
            target = forward(teacher, x)
        return distillation_loss(forward(model, x), target, y, task, temperature, alpha)

    return distilled

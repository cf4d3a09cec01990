"""Token-level distillation of a causal LM: teachers → student over packed text, trained with :func:`slimtorch.train.fit`.

The distillation text becomes sequences of ``tokens.seq_tokens`` tokens (:mod:`~slimtorch.distill.sequences`);
the loss at every real position is ``λ·CE(next token) + (1 − λ)·T²·KL(p_T ‖ q_S)``, averaged over the
batch's real positions, with the teachers' distribution from a top-k cache
(:mod:`~slimtorch.distill.top_k`) or, with ``cache_teacher: false``, the teachers run live (full KL).
The val metric is minus the KL to the teachers (T = 1, full vocabulary) on held-out sequences of the
val split, measured before and after too. Frozen parameters, dropout, ``examples_per_epoch``,
checkpoints, resume and the time budget are the other hops' (:mod:`~slimtorch.distill.engine`, ``fit``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from slimtorch.batch import Batch, forward
from slimtorch.core import RunContext
from slimtorch.data.bundle import DataBundle
from slimtorch.distill.config import DistillConfig, TransformerFeatures
from slimtorch.distill.engine import indexed_loader
from slimtorch.distill.freeze import dropout_off, frozen, frozen_names, tied_aliases
from slimtorch.distill.losses import masked_token_mean, next_token_ce, token_kl, top_k_token_kl
from slimtorch.distill.sequences import TokenSequences, pack_text, text_lines
from slimtorch.distill.top_k import TopKTeacherCache, teacher_log_probs
from slimtorch.errors import RecipeError, ShapeMismatchError
from slimtorch.measure.modes import eval_mode
from slimtorch.models.hf import HFModel, causal_lm_inner
from slimtorch.train import FitResult, fit

# What a causal LM gets when the recipe does not say: the text has no labels beyond itself (λ 0), perplexity is
# measured on the T = 1 distribution, and a pretrained model recovering wants a small rate (a range test would
# cost a hundred steps of a large model).
CAUSAL_LM_DEFAULTS: dict[str, Any] = {"temperature": 1.0, "alpha": 0.0, "lr": 5e-5}


def _what(model: nn.Module) -> str:
    inner = getattr(model, "inner", model)
    return f"a Hugging Face {inner.kind} model" if isinstance(inner, HFModel) else f"a {type(inner).__name__}"


def check_token_distillation(student: nn.Module, teachers: Sequence[nn.Module], config: DistillConfig, data: DataBundle) -> Any:
    """The tokenizer the text is read with, once the teachers and settings fit token-level distillation.

    It is the student's own; a causal LM without one (a random-init config) reads the text with the
    data's tokenizer, as every other stage of the run does.

    Raises:
        RecipeError: a teacher is not a causal LM, there is no tokenizer or it has more tokens than the
            model's vocabulary, ``top_k`` exceeds the vocabulary, or a setting only other models support is given.
        ShapeMismatchError: a teacher's vocabulary differs from the student's.
    """
    lm = causal_lm_inner(student)
    assert lm is not None  # the stage routes causal LMs here
    tokenizer = lm.tokenizer if lm.tokenizer is not None else getattr(data.collate_fn, "tokenizer", None)
    vocab = int(lm.hf.config.vocab_size)
    if tokenizer is None or len(tokenizer) > vocab:
        what = "no tokenizer" if tokenizer is None else f"a tokenizer of {len(tokenizer)} tokens for a vocabulary of {vocab}"
        raise RecipeError(f"distill: token-level distillation reads the text with the student's tokenizer, and there is {what}; "
                          "load the causal LM from a directory or GGUF file that has its tokenizer (or give data a tokenizer "
                          "that fits its vocabulary).")
    unsupported = {"assistant": config.assistant is not None, "ddp": config.ddp is not None, "loss": config.loss != "kd",
                   "features": isinstance(config.features, TransformerFeatures) or bool(config.features)}
    for name, is_set in unsupported.items():
        if is_set:
            raise RecipeError(f"distill.{name} is not supported for a causal-LM student (token-level distillation: KL on the "
                              "next-token distributions, loss kd); remove it.")
    for i, teacher in enumerate(teachers):
        t_lm = causal_lm_inner(teacher)
        if t_lm is None:
            raise RecipeError(f"distill: the student is a causal LM but teacher {i} is {_what(teacher)}; token-level distillation "
                              "needs a causal-LM teacher (kind: causal_lm) with the student's vocabulary.")
        t_vocab = int(t_lm.hf.config.vocab_size)
        same_tokens = t_lm.tokenizer is None or t_lm.tokenizer.get_vocab() == tokenizer.get_vocab()
        if t_vocab != vocab or not same_tokens:
            raise ShapeMismatchError(f"distill: teacher {i} has a vocabulary of {t_vocab} tokens and the student {vocab}"
                                     f"{'' if same_tokens else ' (and their tokenizers differ)'}; token-level distillation "
                                     "compares next-token distributions over one vocabulary: use a teacher with the student's tokenizer.")
    if config.tokens.top_k > vocab:
        raise RecipeError(f"distill.tokens.top_k is {config.tokens.top_k} but the vocabulary has {vocab} tokens; give at most "
                          f"{vocab} (k = {vocab} caches the full distribution; 64 is the usual choice).")
    return tokenizer


TeacherTarget = Tensor | tuple[Tensor, Tensor, Tensor]  # full log-probs (B, T, V), or top-k (values, ids, rest)


def token_loss(student_logits: Tensor, x: dict[str, Tensor], target: TeacherTarget, temperature: float, alpha: float) -> Tensor:
    """``λ·CE(next token) + (1 − λ)·T²·KL(p_T ‖ q_S)``, each the mean over the batch's real positions. -> scalar.

    Args:
        student_logits: (B, T, V) for ``x`` (``input_ids``, ``attention_mask`` (B, T)).
        target: the teachers' log-probabilities at ``temperature``: full (B, T, V), or the top-k cache's
            ``(values, ids, rest)`` (:func:`~slimtorch.distill.losses.top_k_token_kl`).
    """
    device = student_logits.device
    mask = x["attention_mask"].to(device)
    if isinstance(target, tuple):
        values, ids, rest = (t.to(device) for t in target)
        kl = top_k_token_kl(student_logits, values, ids, rest, temperature)  # (B, T)
    else:
        kl = token_kl(student_logits, target.to(device), temperature)
    loss = (1 - alpha) * temperature**2 * masked_token_mean(kl, mask)
    if alpha > 0:
        ce, scored = next_token_ce(student_logits, x["input_ids"].to(device), mask)
        loss = loss + alpha * masked_token_mean(ce, scored)
    return loss


def causal_setting(config: DistillConfig, name: str) -> Any:
    """``temperature``, ``alpha`` or ``lr`` as the recipe gave it, else :data:`CAUSAL_LM_DEFAULTS`."""
    value = getattr(config, name)
    return CAUSAL_LM_DEFAULTS[name] if value is None else value


@torch.no_grad()
def heldout_kl(student: nn.Module, teachers: Sequence[nn.Module], weights: Sequence[float], sequences: TokenSequences,
               batch_size: int = 8) -> float:
    """Mean ``KL(p_T ‖ q_S)`` in nats per real position of ``sequences``, T = 1, full vocabulary, teachers live."""
    total, count = 0.0, 0
    with eval_mode(student):
        for start in range(0, len(sequences), batch_size):
            x = {"input_ids": sequences.input_ids[start : start + batch_size],
                 "attention_mask": sequences.attention_mask[start : start + batch_size]}
            kl = token_kl(forward(student, x), teacher_log_probs(teachers, weights, x, 1.0), 1.0)  # (B, T)
            mask = x["attention_mask"].to(kl.device)
            total, count = total + float((kl * mask).sum()), count + int(mask.sum())
    return total / max(count, 1)


@dataclass
class TokenHopResult:
    """How a token-level hop went: the text it saw, the teacher cache, and the KL to the teachers before and after."""

    fit: FitResult
    train: TokenSequences
    heldout: TokenSequences
    temperature: float
    alpha: float
    heldout_kl_before: float
    heldout_kl_after: float
    sequences_seen: int
    cache: dict[str, Any] | None
    frozen: list[str]
    frozen_params: int
    tied: dict[str, str]

    def details(self) -> dict[str, Any]:
        """The stage record's facts (see docs/DISTILLATION.md, "Causal language models")."""
        history = self.fit.history
        per_sequence = self.train.real_tokens / max(len(self.train), 1)
        return {
            "mode": "tokens", "seq_tokens": int(self.train.input_ids.shape[1]), "sequences": len(self.train),
            "train_tokens": self.train.real_tokens, "sequences_seen": self.sequences_seen,
            "tokens_seen": round(self.sequences_seen * per_sequence), "top_k": None if self.cache is None else self.cache["top_k"],
            "teacher_cache": self.cache, "temperature": self.temperature, "alpha": self.alpha,
            "loss": {"start": round(history[0]["loss"], 6), "end": round(history[-1]["loss"], 6)} if history else None,
            "heldout_sequences": len(self.heldout), "heldout_tokens": self.heldout.real_tokens,
            "heldout_kl_to_teacher": {"before": round(self.heldout_kl_before, 6), "after": round(self.heldout_kl_after, 6)},
            "frozen": {"params": self.frozen_params, "names": self.frozen,
                       "tied": {alias: name for alias, name in self.tied.items() if name in self.frozen}},
        }


def _sequences_seen(result: FitResult, loader: Any, accumulate: int) -> int:
    """Sequences the student trained on: whole epochs of the loader, then the full batches of the last one."""
    per_epoch_steps = math.ceil(len(loader) / accumulate)
    per_epoch = len(loader.sampler)
    epochs, steps = divmod(result.steps, per_epoch_steps)
    return epochs * per_epoch + min(steps * accumulate * (loader.batch_size or 1), per_epoch)


def train_token_hop(student: nn.Module, teachers: Sequence[nn.Module], weights: Sequence[float], data: DataBundle,
                    config: DistillConfig, ctx: RunContext, *, description: str = "distill tokens",
                    checkpoint_dir: Path | None = None) -> TokenHopResult:
    """Distill ``teachers`` into the causal LM ``student`` token by token, in place (best val weights kept)."""
    tokenizer = check_token_distillation(student, teachers, config, data)
    spec, temperature, alpha = config.tokens, float(causal_setting(config, "temperature")), float(causal_setting(config, "alpha"))
    split = data.distill_set() if config.use_transfer else data.train
    train = pack_text(tokenizer, text_lines(split, "train"), spec.seq_tokens, spec.max_sequences)
    heldout = pack_text(tokenizer, text_lines(data.val, "val"), spec.seq_tokens, spec.heldout_sequences)
    frozen_list = frozen_names(student, config.freeze)
    cache = None
    if config.cache_teacher:
        cache = TopKTeacherCache.build(teachers, weights, train, k=spec.top_k, temperature=temperature, work_dir=checkpoint_dir,
                                       max_bytes=config.cache_max_mb * 1e6)

    def loss_fn(model: nn.Module, x: Batch, y: tuple[Tensor, Tensor]) -> Tensor:
        assert isinstance(x, dict)  # TokenSequences batches
        logits = forward(model, x)  # (B, T, V)
        target = cache.lookup(y[1]) if cache is not None else teacher_log_probs(teachers, weights, x, temperature)
        return token_loss(logits, x, target, temperature, alpha)

    cache_facts = None if cache is None else cache.describe()
    kl_before = heldout_kl(student, teachers, weights, heldout)
    loader = indexed_loader(train, None, config.batch_size or data.batch_size, True, ctx.seed, config.examples_per_epoch)
    train_config = config.train_config().model_copy(update={"lr": causal_setting(config, "lr")})
    try:
        with frozen(student, frozen_list), dropout_off(student, not config.use_dropout):
            result = fit(student, loss_fn, loader, train_config, ctx, checkpoint_dir=checkpoint_dir, description=description,
                         evaluate=lambda m: -heldout_kl(m, teachers, weights, heldout))
    finally:
        if cache is not None:
            cache.close()
    params = dict(student.named_parameters())
    return TokenHopResult(fit=result, train=train, heldout=heldout, temperature=temperature, alpha=alpha,
                          heldout_kl_before=kl_before, heldout_kl_after=heldout_kl(student, teachers, weights, heldout),
                          sequences_seen=_sequences_seen(result, loader, train_config.accumulate),
                          cache=cache_facts, frozen=frozen_list,
                          frozen_params=sum(params[n].numel() for n in frozen_list), tied=tied_aliases(student))

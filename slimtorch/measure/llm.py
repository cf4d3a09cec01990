"""The report card of a causal language model: perplexity, agreement with the original, speed, samples.

Everything is measured with the model's own tokenizer on text from the run's ``text`` data source
(the eval split's lines joined with newlines, in split order):

- **perplexity** ``exp(mean NLL)`` of the next token, in fixed-length windows with a stride (the
  sliding-window method of the Hugging Face perplexity guide): windows of ``window`` tokens start
  every ``stride`` tokens; each window scores only the tokens the previous one did not, so every
  scored token (after the first window) sees at least ``window - stride`` tokens of context. At most
  ``max_tokens`` tokens are scored.
- **token_agreement**: fraction of scored positions where the top-1 next token equals the original's;
  **kl_to_original**: mean ``KL(p_original ‖ p_model)`` in nats over the first ``kl_tokens`` of them.
- **prefill latency**: one forward pass over ``prefill_tokens`` tokens at batch 1 (ms, p50/p90...).
- **decode tokens/s** with the KV cache, per batch size: greedy ``generate`` of ``n`` and of 1 new
  tokens from the same prompt; ``batch · (n − 1) / (t_n − t_1)`` (the prompt's prefill cancels out).
  With ``compile`` the cache is static (preallocated, fixed shapes) and ``generate`` runs each decode
  step through ``torch.compile`` (inductor, whole graph, one graph per batch size; the prefill stays
  eager); the first call's compile time is recorded, and the eager figures are measured too.
- **samples**: greedy continuations of :data:`PROMPTS`, for people to read.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimtorch.data.bundle import dataset_len
from slimtorch.errors import DataError
from slimtorch.measure import llamacpp
from slimtorch.measure.latency import pinned_threads, time_latency
from slimtorch.measure.measurement import LLMFacts, LLMSetup
from slimtorch.models.hf import causal_lm_inner

if TYPE_CHECKING:
    from slimtorch.data.bundle import DataBundle
    from slimtorch.measure.config import EvaluateConfig, LLMEvalConfig
    from slimtorch.models.hf import HFModel

PROMPTS = ("The capital of France is", "Once upon a time, a little robot", "To make a good cup of tea, you")


def causal_lm_of(model: nn.Module) -> HFModel | None:
    """The Hugging Face causal LM with a tokenizer inside ``model`` (itself, or the inner model of a bf16
    wrapper), else None. A causal LM without a tokenizer (a random-init config) is measured like any other
    model: cosine of its logits to the baseline's."""

    lm = causal_lm_inner(model)
    return lm if lm is not None and lm.tokenizer is not None else None


@dataclass
class LLMReference:
    """What the original model said on the eval text: compared against by every compressed model.

    Attributes:
        top1: ``(N,)`` the original's most likely next token at each scored position.
        logprobs: ``(M, V)`` float16 log-probabilities at the first ``M ≤ kl_tokens`` scored positions.
        samples: prompt → greedy continuation.
    """

    top1: Tensor
    logprobs: Tensor
    samples: dict[str, str] = field(default_factory=dict)


@dataclass
class LLMResult:
    """One causal LM's measured figures (see the module docstring for how each is taken)."""

    metrics: dict[str, float]
    decode_tokens_per_s: dict[str, float]
    facts: LLMFacts  # prefill, samples, setup; llama.cpp's figures and the eager decode beside a compiled one


def eval_token_ids(lm: HFModel, data: DataBundle, split: str, max_tokens: int) -> Tensor:
    """``(N,)`` token ids of the split's lines joined with newlines (at most ``max_tokens + 1``)."""
    if lm.tokenizer is None:
        raise DataError("measuring a causal LM needs its tokenizer; load it from a directory (or GGUF file) that has one.")
    dataset = getattr(data, split)
    lines = [str(dataset[i][0]) for i in range(len(dataset))]
    if not lines or not isinstance(dataset[0][0], str):
        raise DataError(f"a causal LM is measured on text: use data source 'text' (e.g. --data text --data-args "
                        f"'{{\"path\": \"FILE\"}}'); the {split!r} split holds {type(dataset[0][0]).__name__ if lines else 'nothing'}.")
    ids = lm.tokenizer("\n".join(lines), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if len(ids) < 2:
        raise DataError(f"the {split!r} split has {len(ids)} token(s); a causal LM needs at least 2 to score one.")
    return ids[: max_tokens + 1]


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` per window: tokens ``[begin, end)`` go in, targets ``[first_scored, end)`` are scored.

    Example:
        >>> windows(10, 4, 2)
        [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    """
    out, scored_until = [], 1  # token 0 has no context: never scored
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        if end > scored_until:
            out.append((begin, end, max(scored_until, begin + 1)))
            scored_until = end
        if end == n_tokens:
            break
    return out


@torch.inference_mode()
def scored_logprobs(lm: HFModel, ids: Tensor, cfg: LLMEvalConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Over all windows: ``(nll (N,), top1 (N,), logprobs of the first kl_tokens positions (M, V) fp16)``."""
    nll, top1, kept = [], [], []
    kept_count = 0
    for begin, end, first in windows(len(ids), cfg.window, cfg.stride):
        logits = lm.hf(input_ids=ids[None, begin:end]).logits[0].float()  # (T, V)
        logp = F.log_softmax(logits[first - begin - 1 : end - begin - 1], dim=-1)  # (S, V): predicts tokens [first, end)
        targets = ids[first:end]
        nll.append(-logp.gather(1, targets[:, None])[:, 0])
        top1.append(logp.argmax(-1))
        if kept_count < cfg.kl_tokens:
            take = logp[: cfg.kl_tokens - kept_count]
            kept.append(take.half())
            kept_count += len(take)
    return torch.cat(nll), torch.cat(top1), torch.cat(kept)


@torch.inference_mode()
def greedy_samples(lm: HFModel, new_tokens: int, prompts: tuple[str, ...] = PROMPTS) -> dict[str, str]:
    """Prompt → greedy continuation of ``new_tokens`` tokens."""
    out = {}
    for prompt in prompts:
        enc = lm.tokenizer(prompt, return_tensors="pt")
        ids = _generator(lm).generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=_pad_id(lm))
        out[prompt] = lm.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def _pad_id(lm: HFModel) -> int:
    tok = lm.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id or 0)


# Compiled models per process: every one adds a cache entry to the same code (``Module.__call__``), and
# dynamo falls back to eager past its recompile limit (8 by default); decoding raises it while it runs.
COMPILED_DECODE_LIMIT = 256


def compiled_decode_kwargs(max_cache_len: int) -> dict[str, Any]:
    """``generate`` arguments for a static KV cache of ``max_cache_len`` tokens and a compiled decode step.

    The whole graph is compiled (``fullgraph``: a graph break raises instead of silently running eager
    pieces) with static shapes (one graph per batch size); transformers compiles on CPU only when asked.
    """
    from transformers.generation.configuration_utils import CompileConfig  # the transformers adapter's optional dependency

    config = CompileConfig(fullgraph=True, dynamic=False, mode="default")
    config._compile_all_devices = True  # type: ignore[assignment]  # transformers' switch for compiling on a CPU (typed None)
    return {"cache_implementation": "static", "max_cache_len": max_cache_len, "compile_config": config}


def pack_for_kernels_(model: nn.Module) -> None:
    """Build every quantized layer's packed kernel weights before compiling (no lazy packing inside the graph)."""
    for module in model.modules():
        pack = getattr(module, "pack_for_kernels_", None)
        if callable(pack):
            pack()


def forget_foreign_compiled_call_(hf: nn.Module) -> None:
    """Drop a compiled forward that ``hf`` inherited by ``copy.deepcopy`` from the model it was copied from.

    transformers keeps the compiled ``__call__`` on the model (``_compiled_call``) and reuses it while the
    compile settings match; a deep copy carries it over still bound to the *original* model, so the copy
    would decode with the original's weights. The owner's id is recorded beside it.
    """
    if getattr(hf, "_slimtorch_compiled_for", id(hf)) != id(hf):
        hf.__dict__.pop("_compiled_call", None)
        hf.__dict__.pop("_last_compile_config", None)
    hf.__dict__["_slimtorch_compiled_for"] = id(hf)


@torch.inference_mode()
def decode_tokens_per_s(lm: HFModel, prompt: Tensor, batch: int, new_tokens: int, repeats: int,
                        compiled: bool = False) -> float:
    """Greedy decode throughput with the KV cache: ``batch · (n − 1) / (t_n − t_1)`` (median of ``repeats``).

    ``compiled``: static cache and a ``torch.compile``d decode step (:func:`compiled_decode_kwargs`); the
    warm-up call compiles (:func:`decode_timing` returns its seconds).
    """
    return decode_timing(lm, prompt, batch, new_tokens, repeats, compiled)[0]


@torch.inference_mode()
def decode_timing(lm: HFModel, prompt: Tensor, batch: int, new_tokens: int, repeats: int,
                  compiled: bool = False) -> tuple[float, float]:
    """``(tokens/s, seconds of the warm-up call)``; with ``compiled`` the warm-up includes compiling."""
    ids = prompt[None].expand(batch, -1).contiguous()  # (B, T)
    mask = torch.ones_like(ids)
    extra = compiled_decode_kwargs(ids.shape[1] + new_tokens) if compiled else {}
    if compiled:
        pack_for_kernels_(lm.hf)
        forget_foreign_compiled_call_(lm.hf)

    def run(n: int) -> float:
        # Exactly n tokens: no end-of-text stop (eos_token_id=None) rather than min_new_tokens, whose two logits
        # processors rebuild a vocabulary-sized mask every step (~2 ms a token of SmolLM2 here, not the model's time).
        t0 = time.perf_counter()
        _generator(lm).generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, eos_token_id=None, do_sample=False,
                                use_cache=True, pad_token_id=_pad_id(lm), **extra)
        return time.perf_counter() - t0

    with torch._dynamo.config.patch(recompile_limit=COMPILED_DECODE_LIMIT) if compiled else contextlib.nullcontext():
        warmup_s = run(2)  # warm-up (and, compiled, the compile of this batch size's decode step)
        steps = [run(new_tokens) - run(1) for _ in range(max(repeats, 1))]
    return round(batch * (new_tokens - 1) / max(statistics.median(steps), 1e-9), 3), round(warmup_s, 2)


def reference_of(model: nn.Module, data: DataBundle, config: EvaluateConfig) -> LLMReference:
    """The original model's top-1 tokens, log-probabilities and samples (:class:`LLMReference`)."""
    lm = _require_lm(model)
    cfg = config.llm
    with pinned_threads(model, config.latency.threads):
        _, top1, logprobs = scored_logprobs(lm, eval_token_ids(lm, data, config.split, cfg.max_tokens), cfg)
        samples = greedy_samples(lm, cfg.sample_tokens)
    return LLMReference(top1=top1, logprobs=logprobs, samples=samples)


def measure_llm(model: nn.Module, data: DataBundle, config: EvaluateConfig, reference: LLMReference | None) -> LLMResult:
    """Perplexity, agreement and KL to ``reference``, prefill latency, decode tokens/s and greedy samples."""
    lm = _require_lm(model)
    cfg = config.llm
    ids = eval_token_ids(lm, data, config.split, cfg.max_tokens)
    with pinned_threads(model, config.latency.threads):
        nll, top1, logprobs = scored_logprobs(lm, ids, cfg)
        metrics: dict[str, float] = {"perplexity": round(math.exp(nll.mean().item()), 4), "nll": round(nll.mean().item(), 5)}
        if reference is not None:
            metrics.update(_compare(top1, logprobs, reference))
        prompt = _repeat_to(ids, cfg.prefill_tokens)
        prefill = time_latency(model, {"input_ids": prompt[None]}, warmup=2, repeats=cfg.prefill_repeats,
                               threads=config.latency.threads)
        decode_prompt = prompt[: cfg.decode_prompt_tokens]
        eager = {str(b): decode_tokens_per_s(lm, decode_prompt, b, cfg.decode_tokens, cfg.decode_repeats)
                 for b in cfg.decode_batch_sizes}
        compiled = {str(b): decode_timing(lm, decode_prompt, b, cfg.decode_tokens, cfg.decode_repeats, compiled=True)
                    for b in cfg.decode_batch_sizes} if cfg.compile else {}
        samples = greedy_samples(lm, cfg.sample_tokens)
    cpp = None
    if getattr(model, "slimtorch_format", None) == "gguf":  # the file is scored and timed where it will run, too
        spans = windows(len(ids), cfg.window, cfg.stride)
        cpp = llamacpp.llamacpp_figures(model, ids.tolist(), spans, cfg, config.latency.threads)
    setup = LLMSetup(scored_tokens=len(nll), window=cfg.window, stride=cfg.stride, split=config.split,
                     prefill_tokens=cfg.prefill_tokens, decode_new_tokens=cfg.decode_tokens,
                     decode_prompt_tokens=cfg.decode_prompt_tokens, kl_tokens=len(logprobs),
                     decode="compiled" if cfg.compile else "eager")
    # the headline figure is the compiled one; the eager one stays beside it
    facts = LLMFacts(prefill_ms=prefill, samples=samples, setup=setup, llamacpp=cpp,
                     decode_eager_tokens_per_s=eager if compiled else None,
                     compile_s={b: s for b, (_, s) in compiled.items()} if compiled else None)
    decode = {b: tps for b, (tps, _) in compiled.items()} if compiled else eager
    return LLMResult(metrics=metrics, decode_tokens_per_s=decode, facts=facts)


def _compare(top1: Tensor, logprobs: Tensor, reference: LLMReference) -> dict[str, float]:
    if len(top1) != len(reference.top1):
        raise DataError(f"the model scored {len(top1)} tokens but the original {len(reference.top1)}: "
                        "they must be measured on the same text with the same tokenizer.")
    m = min(len(logprobs), len(reference.logprobs))
    p_log = reference.logprobs[:m].float()  # (M, V)
    kl = (p_log.exp() * (p_log - logprobs[:m].float())).sum(-1)  # (M,)
    return {"token_agreement": round((top1 == reference.top1).float().mean().item(), 5),
            "kl_to_original": round(kl.mean().item(), 6)}


def _repeat_to(ids: Tensor, n: int) -> Tensor:
    return ids.repeat(math.ceil(n / len(ids)))[:n]


def _require_lm(model: nn.Module) -> HFModel:
    lm = causal_lm_of(model)
    if lm is None:
        raise DataError(f"{type(model).__name__} is not a Hugging Face causal LM with a tokenizer; LLM metrics need one (kind: causal_lm, loaded from a directory or GGUF file).")
    return lm


class LMTokenCollate:
    """Tokenize ``(text, label)`` items with a causal LM's own tokenizer: ``({input_ids, attention_mask}, labels)``."""

    def __init__(self, tokenizer: Any, max_length: int = 128) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        if tokenizer.pad_token is None:  # LLaMA-style vocabularies often have none; pad with end-of-text
            self.tokenizer = copy.copy(tokenizer)
            self.tokenizer.pad_token = tokenizer.eos_token

    def __call__(self, items: list[tuple[str, int]]) -> tuple[dict[str, Tensor], Tensor]:
        enc = self.tokenizer([t for t, _ in items], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, torch.tensor([int(y) for _, y in items])


def with_model_tokens(data: DataBundle, model: nn.Module) -> DataBundle:
    """``data`` with its text tokenized by the causal LM's own tokenizer (latency and MACs inputs), else unchanged."""
    lm = causal_lm_of(model)
    if lm is None or lm.tokenizer is None or not dataset_len(data.test) or not isinstance(data.test[0][0], str):
        return data
    return dataclasses.replace(data, collate_fn=LMTokenCollate(lm.tokenizer))


def _generator(lm: HFModel) -> Any:
    """The causal LM's ``generate`` owner: transformers types ``PreTrainedModel`` without its ``GenerationMixin``."""
    return lm.hf

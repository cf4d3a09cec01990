"""A GGUF file measured by llama.cpp itself: perplexity, prefill and decode tokens/s, on 1 thread and on all cores.

People who run a small LLM on a laptop run it in llama.cpp (or Ollama / LM Studio, which embed it), so
the file slimtorch writes is scored where it will run: the same eval tokens and strided windows as the
torch report card (``slimtorch.measure.llm.windows``), fed to llama.cpp as token ids (the GGUF file
carries the model's own tokenizer, so the ids mean the same), and greedy decoding timed token by token
with llama.cpp's KV cache. llama.cpp comes with the ``llamacpp`` extra (``llama-cpp-python``, built from
source: a few minutes); nothing compiles at import time.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from slimtorch.errors import MissingExtraError
from slimtorch.measure.config import LLMEvalConfig
from slimtorch.measure.measurement import LlamaCppFacts, LlamaCppThreads

Spans = list[tuple[int, int, int]]  # (begin, end, first_scored) per window: slimtorch.measure.llm.windows

INSTALL_HINT = ("llama.cpp's figures need the llamacpp extra: pip install 'slimtorch[llamacpp]' (llama-cpp-python, a source "
                "build of llama.cpp: cc, cmake, a few minutes)")


def available() -> bool:
    """Whether ``llama_cpp`` (llama-cpp-python) is installed; nothing is imported or compiled."""
    return importlib.util.find_spec("llama_cpp") is not None


def _llama(path: Path, n_ctx: int, threads: int) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise MissingExtraError(INSTALL_HINT + ".") from exc
    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads, n_threads_batch=threads,
                 logits_all=True, verbose=False, seed=0)


def drop_from_page_cache(path: Path) -> None:
    """Write ``path`` back and drop its cached pages (Linux; elsewhere a no-op), so llama.cpp reads it from disk.

    A file fresh from its writer can sit in the page cache in a layout that decodes several per cent slower than the same
    bytes read back (SmolLM2's Q4_K_M: 0.911× against 0.981×, docs/LLM.md); dropping it first times every file from the
    state a downloaded or copied file is in.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # unreadable here: llama.cpp's own open will say why
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # e.g. a read-only filesystem refuses fsync: time the file as it is cached
    finally:
        os.close(fd)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def perplexity(llm: Any, ids: list[int], spans: Spans) -> dict[str, float]:
    """Perplexity of ``ids`` over the windows ``spans``, each window evaluated from an empty KV cache."""
    nll: list[np.ndarray] = []
    for begin, end, first in spans:
        llm.reset()
        llm.eval(ids[begin:end])
        logits = np.asarray(llm.scores[first - begin - 1 : end - begin - 1], dtype=np.float64)  # (S, V): predicts [first, end)
        logp = _log_softmax(logits)
        targets = np.asarray(ids[first:end])
        nll.append(-logp[np.arange(len(targets)), targets])
    mean = float(np.concatenate(nll).mean())
    return {"perplexity": round(math.exp(mean), 4), "nll": round(mean, 5), "scored_tokens": int(sum(len(n) for n in nll))}


def speed(llm: Any, prompt: list[int], new_tokens: int, repeats: int) -> LlamaCppThreads:
    """Prefill tokens/s over ``prompt`` and greedy decode tokens/s of ``new_tokens`` after it (medians of ``repeats``)."""
    prefill, decode = [], []
    for _ in range(max(repeats, 1)):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        prefill.append(len(prompt) / (time.perf_counter() - t0))
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        decode.append(new_tokens / (time.perf_counter() - t0))
    return LlamaCppThreads(prefill_tokens_per_s=round(float(np.median(prefill)), 2),
                           decode_tokens_per_s=round(float(np.median(decode)), 2))


def measure_gguf(path: str | Path, ids: list[int], spans: Spans, cfg: LLMEvalConfig,
                 threads: list[int] | None = None) -> LlamaCppFacts:
    """llama.cpp's perplexity on ``ids`` over ``spans`` and its speed at each thread count (default: 1 and all cores).

    Raises:
        MissingExtraError: llama-cpp-python is not installed (the message says how to get it).
    """
    path = Path(path)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    counts = threads or sorted({1, cores})
    prompt = (ids * (cfg.prefill_tokens // max(len(ids), 1) + 1))[: cfg.prefill_tokens]
    n_ctx = max(max((end - begin for begin, end, _ in spans), default=1), cfg.prefill_tokens + cfg.decode_tokens + 1)
    scores: dict[str, float] = {}
    speeds: dict[str, LlamaCppThreads] = {}
    drop_from_page_cache(path)  # once: the perplexity pass then reads it in, and later loads find it cached
    for i, count in enumerate(counts):
        llm = _llama(path, n_ctx, count)
        if i == 0:  # the scores do not depend on the thread count: computed once
            scores = perplexity(llm, ids, spans)
        speeds[str(count)] = speed(llm, prompt, cfg.decode_tokens, cfg.decode_repeats)
        llm.close() if hasattr(llm, "close") else None
    return LlamaCppFacts(file=path.name, gguf_bytes=path.stat().st_size, llama_cpp=_version(), prefill_tokens=len(prompt),
                         decode_new_tokens=cfg.decode_tokens, threads=speeds, perplexity=scores.get("perplexity"),
                         nll=scores.get("nll"), scored_tokens=int(scores["scored_tokens"]) if "scored_tokens" in scores else None)


def llamacpp_figures(model: Any, ids: list[int], spans: Spans, cfg: LLMEvalConfig, threads: int) -> LlamaCppFacts:
    """llama.cpp's figures for a model saved as GGUF (``slimtorch_format == "gguf"``, its bytes on ``gguf_bytes``).

    Timed at ``threads`` (the report card's count) and on all cores. Without the extra: only ``skipped`` (how to get it).
    """
    if not available():
        return LlamaCppFacts(skipped=INSTALL_HINT)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="slimtorch-gguf-") as tmp:
        path = Path(tmp) / "model.gguf"
        path.write_bytes(model.gguf_bytes)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return measure_gguf(path, ids, spans, cfg, sorted({threads, cores}))


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "?"

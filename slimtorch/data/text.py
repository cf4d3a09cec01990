"""Offline English sentences for distilling sentence encoders (task ``"embedding"``).

Corpora (:mod:`slimtorch.data.corpora`; nothing is downloaded at run time): ``fortune`` (the default),
``wordnet``, ``docstrings``, ``file`` (``path``: one sentence per line), or a list of them, joined
without duplicates.

Splits: ``split: random`` (the default) shuffles the corpus with the seed and cuts val and test off;
``split: hash`` puts each sentence in val or test by a hash of its text, so the held-out sentences are
the same whatever the seed, ``max_sentences`` or the other corpora in the list, and no run with the
same fractions ever trains on them (recovery curves over corpus sizes compare on one held-out set).

Items are ``(sentence, 0)``; the batch collate tokenizes with the tokenizer of a local Hugging Face
model directory (``tokenizer: minilm`` is the packaged all-MiniLM-L6-v2).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from slimtorch.data.corpora import corpus_sentences, dedup_key, split_sentences
from slimtorch.data.registry import DATA_SOURCES
from slimtorch.errors import DataError
from slimtorch.models.hf import resolve_hf_path

__all__ = ["SentenceDataset", "TextCollate", "split_sentences", "text"]


class SentenceDataset(Dataset):
    """A list of sentences as ``(sentence, 0)`` examples."""

    def __init__(self, sentences: list[str]) -> None:
        self.sentences = sentences

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.sentences[i], 0


class TextCollate:
    """Tokenize a list of ``(sentence, label)`` into ``({input_ids, attention_mask}, labels)``.

    Picklable (the tokenizer is loaded lazily from ``tokenizer_dir``), so DDP workers can use it.
    """

    def __init__(self, tokenizer_dir: str, max_length: int = 64, padding: str = "longest") -> None:
        self.tokenizer_dir, self.max_length, self.padding = tokenizer_dir, max_length, padding
        self._tokenizer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tokenizer_dir": self.tokenizer_dir, "max_length": self.max_length, "padding": self.padding, "_tokenizer": None}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, trust_remote_code=False)
        return self._tokenizer

    def __call__(self, items: list[tuple[str, int]]) -> tuple[dict[str, Tensor], Tensor]:
        texts = [t for t, _ in items]
        enc = self.tokenizer(texts, padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt")
        x = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}  # (B, T) each
        return x, torch.tensor([int(y) for _, y in items])


def _hash_fraction(sentence: str) -> float:
    """A stable number in [0, 1) from the sentence's text (its dedup key), the same on every machine and run."""
    digest = hashlib.blake2b(dedup_key(sentence).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _random_split(sentences: list[str], seed: int, max_sentences: int | None, fractions: tuple[float, float],
                  max_held_out: int | None) -> tuple[list[str], list[str], list[str]]:
    """Seeded shuffle, at most ``max_sentences`` kept, then val and test cut off the front."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    if max_sentences is not None:
        order = order[:max_sentences]
    picked = [sentences[i] for i in order]
    n_val, n_test = int(len(picked) * fractions[0]), int(len(picked) * fractions[1])
    if max_held_out is not None:
        n_val, n_test = min(n_val, max_held_out), min(n_test, max_held_out)
    return picked[n_val + n_test :], picked[:n_val], picked[n_val : n_val + n_test]


def _hash_split(sentences: list[str], seed: int, max_sentences: int | None, fractions: tuple[float, float],
                max_held_out: int | None) -> tuple[list[str], list[str], list[str]]:
    """Test: hash below ``test_fraction``; val: the next ``val_fraction``; ``max_sentences`` caps the train split only."""
    keyed = sorted((_hash_fraction(s), s) for s in sentences)
    n_test = sum(1 for h, _ in keyed if h < fractions[1])
    n_val = sum(1 for h, _ in keyed if fractions[1] <= h < fractions[1] + fractions[0])
    test = [s for _, s in keyed[: min(n_test, max_held_out or n_test)]]
    val = [s for _, s in keyed[n_test : n_test + min(n_val, max_held_out or n_val)]]
    rest = [s for _, s in keyed[n_test + n_val :]]
    order = np.random.default_rng(seed).permutation(len(rest))
    if max_sentences is not None:
        order = order[:max_sentences]
    return [rest[i] for i in order], val, test


@DATA_SOURCES.register("text")
def text(
    seed: int = 0,
    corpus: str | list[str] | None = None,
    path: str | None = None,
    tokenizer: str = "minilm",
    max_length: int = 64,
    max_sentences: int | None = 6000,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    padding: str = "longest",
    split: str = "random",
    max_held_out: int | None = None,
) -> dict[str, Any]:
    """English sentences for sentence-encoder distillation; task ``"embedding"``, items ``(sentence, 0)``.

    Args:
        corpus: ``fortune``, ``wordnet``, ``docstrings``, ``file`` (then ``path`` is required), or a list of
            them (joined, duplicates dropped); default ``file`` when ``path`` is given, else ``fortune``.
        tokenizer: a local Hugging Face model directory, or ``minilm``.
        max_sentences: ``split: random``: keep at most this many in all (a seeded random subset);
            ``split: hash``: at most this many training sentences. ``None`` keeps all.
        padding: ``longest`` pads each batch to its longest sentence; ``max_length`` pads every batch to
            ``max_length`` tokens (fixed-shape inputs, e.g. latency at 8×128 tokens; training costs more).
        split: ``random`` (seeded shuffle) or ``hash`` (held-out sentences fixed by their text; see the module doc).
        max_held_out: at most this many val and this many test sentences (``None``: the fractions decide).
    """

    if padding not in ("longest", "max_length"):
        raise DataError(f"data.args.padding must be 'longest' or 'max_length'; got {padding!r}.")
    if split not in ("random", "hash"):
        raise DataError(f"data.args.split must be 'random' (seeded shuffle) or 'hash' (held-out sentences fixed by their text); got {split!r}.")
    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise DataError(f"data.args.val_fraction and test_fraction must be > 0 with a sum below 1; got {val_fraction} and {test_fraction}.")
    names = [corpus] if isinstance(corpus, str) else list(corpus or ["file" if path is not None else "fortune"])
    sentences = corpus_sentences(names, path)
    cut = _hash_split if split == "hash" else _random_split
    train, val, test = cut(sentences, seed, max_sentences, (val_fraction, test_fraction), max_held_out)
    if not train or not val or not test:
        raise DataError(f"the text corpus has only {len(sentences)} sentences; give at least 10 so train/val/test each get some.")
    return {
        "train": SentenceDataset(train),
        "val": SentenceDataset(val),
        "test": SentenceDataset(test),
        "task": "embedding",
        "collate_fn": TextCollate(resolve_hf_path(tokenizer), max_length, padding),
    }

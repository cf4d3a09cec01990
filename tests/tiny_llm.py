"""A tiny LLaMA-architecture GGUF file (random weights, byte-level BPE tokenizer) for fast LLM tests.

Written with the ``gguf`` package, read back by transformers exactly like a real llama.cpp file, so
``gguf:`` loading, the tokenizer and the LLM report card run end to end in a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


def write_tiny_gguf(path: Path, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    ffn: int = 128) -> Path:
    """Write a random LLaMA GGUF file of 260 tokens (256 bytes + 3 merges + end-of-text) to ``path``."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    tokens = list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe", "<|endoftext|>"]
    vocab, head_dim = len(tokens), hidden // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_token_types([1] * (vocab - 1) + [3])  # the last one is a control token
    writer.add_bos_token_id(vocab - 1)
    writer.add_eos_token_id(vocab - 1)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    ones = np.ones(hidden, np.float32)
    writer.add_tensor("token_embd.weight", weight(vocab, hidden))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", weight(vocab, hidden))
    for i in range(layers):
        for name, tensor in {"attn_norm": ones, "ffn_norm": ones, "attn_q": weight(hidden, hidden),
                             "attn_k": weight(kv_heads * head_dim, hidden), "attn_v": weight(kv_heads * head_dim, hidden),
                             "attn_output": weight(hidden, hidden), "ffn_gate": weight(ffn, hidden),
                             "ffn_up": weight(ffn, hidden), "ffn_down": weight(hidden, ffn)}.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


ENGLISH = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A journey of a thousand miles begins with a single step.",
    "Knowledge is power, and the pen is mightier than the sword.",
    "She sells sea shells by the sea shore every summer morning.",
    "The early bird catches the worm, but the second mouse gets the cheese.",
    "All that glitters is not gold, and not all who wander are lost.",
    "Time flies like an arrow; fruit flies like a banana.",
    "The rain in Spain stays mainly in the plain, or so the song says.",
    "An apple a day keeps the doctor away, if you aim well.",
    "Better late than never, but never late is better.",
    "Actions speak louder than words in the theatre of life.",
    "Curiosity killed the cat, but satisfaction brought it back.",
]


def load_tiny_gguf(root: Path, name: str = "tiny.gguf", **shape: Any) -> Any:
    """Write a tiny GGUF file under ``root`` and load it as ``gguf:<file>``, converted into ``root/cache``
    (``SLIMTORCH_CACHE`` is set for the load only, so tests never touch the user's cache)."""
    from slimtorch.models import build_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMTORCH_CACHE", str(root / "cache"))
        return build_model(f"gguf:{write_tiny_gguf(root / name, **shape)}")


def write_text(path: Path, repeat: int = 2) -> Path:
    """A small UTF-8 English text file (one sentence per line)."""
    path.write_text("\n".join(ENGLISH * repeat) + "\n", encoding="utf-8")
    return path

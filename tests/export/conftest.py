"""Fixtures shared by the GGUF export tests."""

from __future__ import annotations

import pytest

from slimtorch.data import build_data
from tests.tiny_llm import load_tiny_gguf, write_text


@pytest.fixture(scope="module")
def tiny256(tmp_path_factory):
    """A tiny LLaMA with 256-wide rows (so the K-quants' super-blocks fit), text data, and the folder they live in."""
    pytest.importorskip("gguf")
    root = tmp_path_factory.mktemp("gguf256")
    model = load_tiny_gguf(root, hidden=256, ffn=512, heads=4, kv_heads=2)
    data = build_data("text", args={"path": str(write_text(root / "text.txt", repeat=3))})
    return model, data, root

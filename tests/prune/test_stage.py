import copy

import pytest
from torch import nn
from torch.nn import functional as F

from slimtorch.core import STAGES, RunContext
from slimtorch.errors import RecipeError, UnsupportedModuleError
from slimtorch.measure.accuracy import task_metric
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.prune.masks import masked_modules
from slimtorch.train.loop import TrainConfig, fit


def accuracy(model, data):
    return task_metric(model, data, "test")


def test_registered():
    assert STAGES.get("prune") is PruneStage and PruneStage.config_cls is PruneConfig


def test_unstructured_keeps_accuracy_and_is_honest(mlp, digits, ctx):
    dense = accuracy(mlp, digits)
    out, record = PruneStage(PruneConfig(sparsity=0.5, granularity="weight")).apply(mlp, ctx)
    assert record.details["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert accuracy(out, digits) > dense - 0.03
    assert record.details["skipped"] == [{"fqn": "net.5", "reason": pytest.approx(record.details["skipped"][0]["reason"])}]
    assert "classifier" in record.details["skipped"][0]["reason"]
    assert any("no speedup on dense CPU kernels" in n for n in record.notes)
    assert record.details["macs_after"] == record.details["macs_before"]
    assert record.details["nonzero_params_after"] < record.details["nonzero_params_before"]


def test_masks_survive_later_training(mlp, digits, ctx):
    out, _ = PruneStage(PruneConfig(sparsity=0.8, scope="global")).apply(mlp, ctx)
    zeros = {f: (m.weight == 0).clone() for f, m in masked_modules(out).items()}
    fit(out, lambda m, x, y: F.cross_entropy(m(x), y), digits.loader("train", shuffle=True), TrainConfig(epochs=1), ctx)
    for f, m in masked_modules(out).items():
        assert (m.weight[zeros[f]] == 0).all()


@pytest.mark.parametrize("schedule", ["iterative", "cubic"])
def test_schedules_with_recovery(schedule, mlp, digits, ctx):
    unrecovered, _ = PruneStage(PruneConfig(sparsity=0.9, scope="global", recover="none")).apply(copy.deepcopy(mlp), ctx)
    cfg = PruneConfig(sparsity=0.9, schedule=schedule, steps=3, finetune_epochs=2, lr=3e-3, scope="global")
    out, record = PruneStage(cfg).apply(mlp, ctx)
    assert [h["step"] for h in record.details["schedule"]] == [1, 2, 3]
    assert record.details["achieved_sparsity"] == pytest.approx(0.9, abs=0.01)
    # 90 % of a 64-64-32 MLP's weights gone: recovery between steps must win back most of the accuracy
    assert accuracy(out, digits) > max(0.8, accuracy(unrecovered, digits) + 0.05)


def test_recover_by_distillation(mlp, trained_mlp, digits, tmp_path):
    ctx = RunContext(data=digits, teacher=trained_mlp, work_dir=tmp_path)
    unrecovered, _ = PruneStage(PruneConfig(sparsity=0.9, scope="global", recover="none")).apply(copy.deepcopy(mlp), ctx)
    out, _ = PruneStage(PruneConfig(sparsity=0.9, recover="distill", finetune_epochs=2, lr=3e-3, scope="global")).apply(mlp, ctx)
    assert accuracy(out, digits) > max(0.8, accuracy(unrecovered, digits) + 0.05)


def test_distill_without_teacher_says_so(mlp, ctx):
    _, record = PruneStage(PruneConfig(sparsity=0.5, recover="distill", finetune_epochs=1)).apply(mlp, ctx)
    assert any("has no teacher" in n for n in record.notes)


def test_unknown_layer_name_lists_close_names(mlp, ctx):
    with pytest.raises(RecipeError, match=r"no module 'net\.11'.*Close names: net\.1"):
        PruneStage(PruneConfig(layers={"exclude": ["net.11"]})).apply(mlp, ctx)


def test_include_exclude(mlp, ctx):
    _, record = PruneStage(PruneConfig(sparsity=0.5, layers={"include": ["net"], "exclude": ["net.3"]})).apply(mlp, ctx)
    assert list(record.details["layer_sparsity"]) == ["net.1"]


class _OnlyNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(64)
        self.emb = nn.Embedding(10, 64)

    def forward(self, x):
        return self.norm(x.flatten(1))


def test_nothing_prunable_raises(ctx):
    with pytest.raises(UnsupportedModuleError, match="nothing in this model can be pruned.*emb: embedding table"):
        PruneStage(PruneConfig()).apply(_OnlyNorm(), ctx)


def test_kernel_on_mlp_explains(mlp, ctx):
    with pytest.raises(UnsupportedModuleError, match="has no 2-D kernels"):
        PruneStage(PruneConfig(granularity="kernel")).apply(mlp, ctx)


def test_nm_skips_incompatible_layer(resnet, ctx):
    _, record = PruneStage(PruneConfig(granularity="2:4")).apply(resnet, ctx)
    reasons = {s["fqn"]: s["reason"] for s in record.details["skipped"]}
    assert "multiple of 4" in reasons["stem.0"] and "classifier" in reasons["fc"]
    assert record.details["achieved_sparsity"] == pytest.approx(0.5)
    assert any("sparse tensor cores" in n for n in record.notes)


def test_structured_reports_macs_and_latency(resnet, ctx):
    _, record = PruneStage(PruneConfig(sparsity=0.5, granularity="filter", round_to=4)).apply(resnet, ctx)
    d = record.details
    assert d["macs_after"] < 0.5 * d["macs_before"]
    assert d["latency_ms_before_b1"] > 0 and d["mac_reduction"] > 2
    assert all(after % 4 == 0 for _, after in d["channels"].values())

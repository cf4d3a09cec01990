"""Layer-wise transformer distillation: layer maps, the preset's pairs, masked feature losses, the teacher cache, freezing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from slimtorch.core import RunContext, forward
from slimtorch.data import DataBundle, build_data
from slimtorch.distill import DistillConfig, DistillStage, derive_student
from slimtorch.distill.cache import TeacherCache
from slimtorch.distill.config import FeatureSpec, TransformerFeatures
from slimtorch.distill.engine import TeacherPanel, _loader
from slimtorch.distill.freeze import dropout_off, frozen, frozen_names
from slimtorch.distill.hooks import FeatureTaps
from slimtorch.distill.layers import layer_map, transformer_pairs, uniform_map
from slimtorch.distill.losses import FEATURE_LOSSES, kl_div, relation_log_probs
from slimtorch.errors import RecipeError, ShapeMismatchError
from slimtorch.models import build_model
from slimtorch.prune.transformers import drop_layers_

TINY = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
        "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 32}
WORDS = ["the", "a", "river", "old", "small", "seven", "birds", "sing", "near", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "green"]


def _tiny(layers: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("hf:tiny", {"kind": "encoder", "config": {**TINY, "num_hidden_layers": layers}}).eval()


def _dropped(teacher: nn.Module, drop: list[int]) -> nn.Module:
    student = copy.deepcopy(teacher)
    drop_layers_(student.hf, drop)
    return student


def _corpus(tmp_path: Path, n: int = 160) -> str:
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (3 + k % 9,), generator=g)) for k in range(n)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines))
    return str(path)


def test_uniform_map_ends_on_the_teachers_last_layer() -> None:
    assert uniform_map(3, 6) == [1, 3, 5]
    assert uniform_map(5, 6) == [1, 2, 3, 4, 5]
    assert uniform_map(6, 6) == [0, 1, 2, 3, 4, 5]


def test_layer_map_of_a_layer_pruned_student_comes_from_its_weights() -> None:
    teacher = _tiny()
    student = _dropped(teacher, [2])
    assert layer_map(TransformerFeatures(), student, teacher) == ([0, 1, 3], "weights")
    with torch.no_grad():  # still recognised after some training
        for p in student.parameters():
            p.add_(0.01 * p.abs().mean() * torch.randn_like(p))
    assert layer_map(TransformerFeatures(), student, teacher) == ([0, 1, 3], "weights")
    other = _tiny(3, seed=1)  # unrelated weights: uniform
    assert layer_map(TransformerFeatures(), other, teacher) == ([1, 2, 3], "uniform")
    assert layer_map(TransformerFeatures(layer_map=[0, 2, 3]), other, teacher) == ([0, 2, 3], "given")
    with pytest.raises(RecipeError, match=r"layer_map \[0, 2\] must give one teacher layer \(0..3\) for each of the student's 3 layers"):
        layer_map(TransformerFeatures(layer_map=[0, 2]), other, teacher)


def test_auto_student_map_is_recorded_and_ends_on_the_last_layer() -> None:
    teacher = _tiny()
    student = derive_student(teacher, width=1.0, depth=0.5)  # keeps layers 0 and 2
    assert layer_map(TransformerFeatures(), student, teacher) == ([0, 3], "recorded")


def test_preset_expands_to_hidden_and_relation_pairs() -> None:
    teacher = _tiny()
    spec = TransformerFeatures(hidden="cosine", relations=["query", "key", "value"], relation_weight=0.5)
    expanded = transformer_pairs(spec, _dropped(teacher, [1]), teacher)
    hidden = [(p.student, p.teacher, p.loss) for p in expanded.pairs if p.loss != "relation"]
    assert hidden == [("hf.encoder.layer.0", "hf.encoder.layer.0", "cosine"), ("hf.encoder.layer.1", "hf.encoder.layer.2", "cosine"),
                      ("hf.encoder.layer.2", "hf.encoder.layer.3", "cosine")]
    relations = [(p.student, p.teacher, p.weight) for p in expanded.pairs if p.loss == "relation"]
    assert relations == [(f"hf.encoder.layer.2.attention.self.{r}", f"hf.encoder.layer.3.attention.self.{r}", 0.5)
                         for r in ("query", "key", "value")]
    assert expanded.details()["layer_map_source"] == "weights"
    with pytest.raises(ValueError, match="layer_map must be non-negative, strictly increasing"):
        TransformerFeatures(layer_map=[2, 1])


def test_token_losses_ignore_padding() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pair = FeatureSpec(student="a", teacher="b", relation_heads=2)
    for name in ("mse", "cosine", "relation"):
        base = FEATURE_LOSSES.get(name)(s, t, mask, pair)
        s2, t2 = s.clone(), t.clone()
        s2[0, 3:], t2[0, 3:] = 100.0, -100.0  # padded positions of example 0 change
        torch.testing.assert_close(FEATURE_LOSSES.get(name)(s2, t2, mask, pair), base, msg=name)
        assert float(FEATURE_LOSSES.get(name)(t, t, mask, pair).abs().max()) < 1e-5, name
    expected_mse = (s[0, :3] - t[0, :3]).pow(2).mean()
    torch.testing.assert_close(FEATURE_LOSSES.get("mse")(s, t, mask, pair)[0], expected_mse)


def test_relation_loss_matches_hand_computation() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(1, 3, 4), torch.randn(1, 3, 6)  # the widths may differ
    mask = torch.ones(1, 3, dtype=torch.long)
    pair = FeatureSpec(student="a", teacher="b", loss="relation", relation_heads=2)
    expected = 0.0
    for head in range(2):
        xs, xt = s[0, :, head * 2:(head + 1) * 2], t[0, :, head * 3:(head + 1) * 3]
        ps, pt = torch.softmax(xs @ xs.T / 2**0.5, -1), torch.softmax(xt @ xt.T / 3**0.5, -1)
        expected += (pt * (pt.log() - ps.log())).sum(-1).mean() / 2
    torch.testing.assert_close(FEATURE_LOSSES.get("relation")(s, t, mask, pair), expected.reshape(1))
    torch.testing.assert_close(kl_div(relation_log_probs(t, mask, 2).exp(), relation_log_probs(t, mask, 2)), torch.zeros(1, 2, 3))
    with pytest.raises(ShapeMismatchError, match="width 6 is not divisible by relation_heads=4"):
        FEATURE_LOSSES.get("relation")(torch.randn(1, 3, 8), t, mask, FeatureSpec(student="a", teacher="b", relation_heads=4))
    with pytest.raises(ShapeMismatchError, match="loss 'relation' needs token features"):
        FEATURE_LOSSES.get("relation")(torch.randn(2, 8), torch.randn(2, 8), None, pair)


@pytest.mark.parametrize("on_disk", [False, True])
def test_teacher_cache_gives_live_features_in_any_batch(tmp_path: Path, on_disk: bool) -> None:
    data = build_data("text", args={"path": _corpus(tmp_path), "max_length": 16}, batch_size=8)
    teacher = _tiny()
    pairs = [FeatureSpec(student="hf.encoder.layer.1", teacher="hf.encoder.layer.1"),
             FeatureSpec(student="hf.encoder.layer.3.attention.self.key", teacher="hf.encoder.layer.3.attention.self.key", loss="relation")]
    panel = TeacherPanel([teacher], [1.0], DistillConfig(loss="cosine"), pairs)
    cache = TeacherCache.build(panel.compute, _loader(data.train, data, 64, False, 0), len(data.train), tmp_path / "work",
                               0.0 if on_disk else 1e9)
    assert cache.is_on_disk == on_disk and len(list((tmp_path / "work").glob("*.f16")) if on_disk else []) == (2 if on_disk else 0)
    x, (_, idx) = next(iter(_loader(data.train, data, 8, True, 3)))  # another batch size and order: other padding
    target, feats = cache.lookup(idx, x["attention_mask"])
    live_target, live = panel.compute(x)
    torch.testing.assert_close(target, live_target)
    mask = x["attention_mask"].bool()
    for key in live:
        assert feats[key].shape == live[key].shape
        torch.testing.assert_close(feats[key][mask], live[key][mask], atol=2e-3, rtol=2e-3)  # fp16 storage
        assert float(feats[key][~mask].abs().sum()) == 0.0
    cache.close()
    panel.close()
    assert not list((tmp_path / "work").glob("*.f16"))


def test_freeze_globs_are_checked_and_restored() -> None:
    model = _tiny(2)
    names = frozen_names(model, ["*embeddings*"])
    assert names and all("embeddings" in n for n in names)
    with frozen(model, names):
        assert not any(p.requires_grad for n, p in model.named_parameters() if n in names)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(RecipeError, match=r"'\*embedings\.wrd\*' matches no parameter of the student"):
        frozen_names(model, ["*embedings.wrd*"])
    with pytest.raises(RecipeError, match="freezes every parameter"):
        frozen_names(model, ["*"])
    rates = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert rates and max(rates) > 0
    with dropout_off(model):
        assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == rates


@torch.no_grad()
def _hidden_gap(student: nn.Module, teacher: nn.Module, data: DataBundle) -> float:
    """Mean squared distance of student layer outputs 0, 1, 2 to teacher layers 0, 2, 3 on the test split (real tokens)."""
    s_taps = FeatureTaps(student, [f"hf.encoder.layer.{i}" for i in range(3)])
    t_taps = FeatureTaps(teacher, [f"hf.encoder.layer.{j}" for j in (0, 2, 3)], "teacher")
    total = 0.0
    for x, _ in data.loader("test"):
        forward(student.eval(), x), forward(teacher, x)
        s_feats, t_feats = s_taps.pop(), t_taps.pop()
        mask = x["attention_mask"].bool()
        total += sum(float((s_feats[f"hf.encoder.layer.{i}"] - t_feats[f"hf.encoder.layer.{j}"])[mask].pow(2).mean())
                     for i, j in zip(range(3), (0, 2, 3)))
    s_taps.remove()
    t_taps.remove()
    return total


def test_layer_pruned_encoder_recovers_with_layer_wise_distillation(tmp_path: Path) -> None:
    data = build_data("text", args={"path": _corpus(tmp_path, 240), "max_length": 16, "split": "hash"}, batch_size=16)
    teacher = _tiny()
    student = _dropped(teacher, [1])
    torch.manual_seed(0)
    with torch.no_grad():  # a random tiny encoder barely needs a layer: disturb the student's so there is something to recover
        for n, p in student.named_parameters():
            if "encoder" in n and p.dim() == 2:
                p.add_(0.3 * p.std() * torch.randn_like(p))
    embeddings = {n: p.clone() for n, p in student.named_parameters() if "embeddings" in n}
    before = _hidden_gap(student, teacher, data)
    cfg = DistillConfig(loss="cosine", epochs=6, lr=3e-3, features={"transformer": {"relations": ["query", "key", "value"], "relation_heads": 4}}, freeze=["*embeddings*"],
                        examples_per_epoch=96, use_dropout=False)
    model, record = DistillStage(cfg).apply(student, RunContext(data=data, teacher=teacher, work_dir=tmp_path / "run", task="embedding"))
    after = _hidden_gap(model, teacher, data)
    assert after < 0.5 * before, (before, after)  # the student's layers moved to their teacher layers' outputs
    hop = record.details["hops"][0]
    assert record.details["layers"]["layer_map"] == [0, 2, 3] and record.details["layers"]["layer_map_source"] == "weights"
    assert hop["steps"] == 6 * 96 // 16 and hop["cached_teacher"] and hop["teacher_cache"]["features"] == 6
    assert hop["frozen_params"] == sum(p.numel() for p in embeddings.values())
    for n, p in model.named_parameters():
        if n in embeddings:
            assert torch.equal(p, embeddings[n]), n
    assert all(p.requires_grad for p in model.parameters())
    assert forward(model, data.example_batch(2)).shape == (2, 32)


def test_random_epochs_resume_like_an_uninterrupted_run(tmp_path: Path) -> None:
    data = build_data("text", args={"path": _corpus(tmp_path, 200), "max_length": 16}, batch_size=16)
    teacher = _tiny()
    cfg = DistillConfig(loss="cosine", epochs=3, lr=1e-3, features="transformer", examples_per_epoch=48, patience=None, use_dropout=False)

    def run(student: nn.Module, config: DistillConfig, work: str) -> dict:
        ctx = RunContext(data=data, teacher=teacher, work_dir=tmp_path / work, task="embedding")
        return DistillStage(config).apply(student, ctx)[1].details["hops"][0]

    straight, interrupted = _dropped(teacher, [2]), _dropped(teacher, [2])
    full = run(straight, cfg, "a")
    run(interrupted, cfg.model_copy(update={"epochs": 2}), "b")  # stopped after epoch 2 of 3, checkpoint kept
    resumed = run(interrupted, cfg, "b")
    assert resumed["resumed_from_epoch"] == 2 and full["steps"] == resumed["steps"] == 9
    assert resumed["history"] == full["history"]
    for (name, a), b in zip(straight.state_dict().items(), interrupted.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)

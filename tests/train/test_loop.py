import math

import pytest
import torch

from slimtorch.errors import ArtifactError, TrainingError
from slimtorch.measure.accuracy import task_metric
from slimtorch.models import build_model
from slimtorch.train import TrainConfig, cross_entropy, fit


def _model(digits):
    return build_model("mlp", {"hidden": [32]}, input_shape=digits.input_shape, num_classes=10)


def test_fit_learns_and_keeps_best(digits, ctx):
    model = _model(digits)
    before = task_metric(model, digits, "val")
    result = fit(model, cross_entropy, digits.loader("train", shuffle=True), TrainConfig(epochs=6, lr=1e-2), ctx,
                 evaluate=lambda m: task_metric(m, digits, "val"))
    after = task_metric(model, digits, "val")
    assert after > 0.85 > before
    assert after == pytest.approx(result.best_metric)
    assert result.epochs_run == 6 and len(result.history) == 6


def test_resume_equals_uninterrupted(digits, ctx, tmp_path):
    cfg = TrainConfig(epochs=3, lr=3e-3)
    loader = digits.loader("train", shuffle=True)
    torch.manual_seed(0)
    straight = _model(digits)
    fit(straight, cross_entropy, loader, cfg, ctx, checkpoint_dir=tmp_path / "a")
    torch.manual_seed(0)
    interrupted = _model(digits)
    steps = []

    def crash_mid_epoch_3(m):
        steps.append(1)
        if len(steps) == len(loader) * 2 + 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, cross_entropy, loader, cfg, ctx, checkpoint_dir=tmp_path / "b", after_step=crash_mid_epoch_3)
    # the same run, continued from its epoch-2 checkpoint
    torch.manual_seed(0)
    resumed = _model(digits)
    result = fit(resumed, cross_entropy, loader, cfg, ctx, checkpoint_dir=tmp_path / "b")
    assert result.resumed_from_epoch == 2
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_non_finite_loss_stops_and_restores(digits, ctx):
    model = _model(digits)
    good = {k: v.clone() for k, v in model.state_dict().items()}

    def exploding(m, x, y):
        return cross_entropy(m, x, y) * math.inf

    with pytest.raises(TrainingError, match=r"loss became inf at epoch 0, step 0.*restored"):
        fit(model, exploding, digits.loader("train"), TrainConfig(epochs=1), ctx)
    assert all(torch.equal(good[k], v) for k, v in model.state_dict().items())


def test_corrupted_checkpoint_is_reported(digits, ctx, tmp_path):
    model = _model(digits)
    fit(model, cross_entropy, digits.loader("train"), TrainConfig(epochs=1, max_steps=2), ctx, checkpoint_dir=tmp_path)
    (tmp_path / "last" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="corrupted or incomplete"):
        fit(_model(digits), cross_entropy, digits.loader("train"), TrainConfig(epochs=2), ctx, checkpoint_dir=tmp_path)


def test_accumulating_two_half_batches_equals_one_full_batch(ctx):
    """accumulate: 2 at batch 32 takes the optimizer steps of batch 64 (same shuffle, mean of equal halves)."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(256, 64, generator=g), torch.randint(0, 10, (256,), generator=g))
    runs = []
    for batch, accumulate in ((64, 1), (32, 2)):
        torch.manual_seed(0)
        model = build_model("mlp", {"hidden": [32]}, input_shape=(64,), num_classes=10)
        loader = DataLoader(data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
        result = fit(model, cross_entropy, loader, TrainConfig(epochs=3, patience=None, accumulate=accumulate), ctx)
        runs.append((model, result))
    (full, r_full), (acc, r_acc) = runs
    assert r_full.steps == r_acc.steps == 3 * 4  # 4 optimizer steps per epoch either way
    for a, b in zip(full.parameters(), acc.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_trains_with_fp32_weights(digits, ctx):
    """precision: bf16 runs the forward in bfloat16 (CPU autocast here), keeps fp32 weights and learns as fp32 does."""
    import dataclasses

    scores = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model("mlp", {"hidden": [64]}, input_shape=digits.input_shape, num_classes=10)
        fit(model, cross_entropy, digits.loader("train", shuffle=True), TrainConfig(epochs=8, patience=None),
            dataclasses.replace(ctx, precision=precision))
        assert all(p.dtype == torch.float32 for p in model.parameters())
        scores[precision] = task_metric(model, digits, "test")
    assert scores["fp32"] > 0.85 and abs(scores["bf16"] - scores["fp32"]) < 0.03, scores

import torch

from slimtorch.measure.accuracy import mean_cosine
from slimtorch.measure.evaluate import cat_padded


def test_sequence_outputs_of_different_lengths_are_padded_not_refused():
    a, b = torch.randn(2, 3, 5), torch.randn(4, 7, 5)  # (B, T, V) batches with T = 3 and 7
    out = cat_padded([a, b])
    assert out.shape == (6, 7, 5)
    assert torch.equal(out[:2, :3], a) and (out[:2, 3:] == 0).all() and torch.equal(out[2:], b)


def test_padding_keeps_cosine_of_identical_models_exact():
    batches = [torch.randn(2, 3, 4), torch.randn(2, 5, 4)]
    assert abs(mean_cosine(cat_padded(batches), cat_padded([x.clone() for x in batches])) - 1.0) < 1e-6


def test_flat_outputs_are_plain_cat():
    assert cat_padded([torch.ones(2, 3), torch.zeros(1, 3)]).shape == (3, 3)

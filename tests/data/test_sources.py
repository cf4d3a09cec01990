import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from slimtorch.data import UNLABELED, build_data
from slimtorch.errors import DataError


def test_digits_splits_and_shapes(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    sizes = len(digits.train), len(digits.val), len(digits.test)
    assert sum(sizes) == 1797 and sizes[2] == int(1797 * 0.2)
    x, y = next(iter(digits.loader("train", 16)))
    assert x.shape == (16, 1, 8, 8) and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.long


def test_mnist1d_is_generated_offline():
    data = build_data("mnist1d", args={"num_samples": 600})
    assert data.input_shape == (1, 40) and data.num_classes == 10
    assert len(data.train) + len(data.val) + len(data.test) == 600


def test_labeled_fraction_hides_labels_stratified():
    data = build_data("digits", labeled_fraction=0.1)
    labels = np.array([int(data.train[i][1]) for i in range(len(data.train))])
    assert 0.08 < len(labels) / (len(labels) + len(data.transfer)) < 0.12
    assert set(labels.tolist()) == set(range(10))  # every class keeps some labels
    assert {int(data.transfer[i][1]) for i in range(len(data.transfer))} == {UNLABELED}
    assert len(data.distill_set()) == len(data.train) + len(data.transfer)
    # a teacher trained in the recipe still learns from every label (scenario 2: it had its own data)
    assert len(data.teacher_train) == len(data.train) + len(data.transfer)


def _user_source(n_train=20, bad_label=False, empty_test=False):
    x = torch.randn(n_train, 3)
    y = torch.arange(n_train) % 2
    if bad_label:
        y[0] = -3
    test = TensorDataset(x[:0], y[:0]) if empty_test else TensorDataset(x, y)
    return {"train": TensorDataset(x, y), "val": TensorDataset(x, y), "test": test}


def make_ok():
    return _user_source()


def make_empty():
    return _user_source(empty_test=True)


def make_bad_label():
    return _user_source(bad_label=True)


def make_wrong_type():
    return [1, 2]


def test_user_module_function_source():
    data = build_data("tests.data.test_sources:make_ok")
    assert data.num_classes == 2 and data.input_shape == (3,)


@pytest.mark.parametrize(
    "ref, match",
    [
        ("tests.data.test_sources:make_empty", "empty 'test' split"),
        ("tests.data.test_sources:make_bad_label", "labels must be class indices"),
        ("tests.data.test_sources:make_wrong_type", "must return a dict with keys 'train', 'val', 'test'"),
        ("tests.data.no_such_module:f", "cannot import module 'tests.data.no_such_module'"),
        ("tests.data.test_sources:nothing", "has no attribute 'nothing'"),
    ],
)
def test_bad_user_sources(ref, match):
    with pytest.raises(DataError, match=match):
        build_data(ref)


def test_labels_above_num_classes():
    with pytest.raises(DataError, match="labels go up to 9 but num_classes is 5"):
        build_data("digits", num_classes=5)


def test_unknown_builtin_source_suggests():
    from slimtorch.errors import RecipeError

    with pytest.raises(RecipeError, match="Did you mean 'digits'"):
        build_data("digit")


def test_labeled_and_transfer_examples_collate_in_one_batch():
    data = build_data("digits", labeled_fraction=0.1)
    x, y = next(iter(data.loader(data.distill_set(), 512, shuffle=True)))
    assert x.shape == (512, 1, 8, 8) and y.dtype == torch.long
    assert (y == UNLABELED).any() and (y >= 0).any()

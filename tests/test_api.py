"""The public API: every exported name resolves, and the callables are what the README shows."""

import slimtorch


def test_every_public_name_resolves():
    for name in slimtorch.__all__:
        assert getattr(slimtorch, name) is not None, name


def test_measure_model_is_the_function_even_after_the_subpackage_is_imported():
    import slimtorch.measure

    assert callable(slimtorch.measure_model)
    assert slimtorch.LoraStage.name == "lora" and slimtorch.LoraConfig().rank == 8
    assert not hasattr(slimtorch, "run_recipe")  # one name per function: `compress`


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        slimtorch.nope  # noqa: B018

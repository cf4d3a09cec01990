import pytest

from slimtorch.errors import RecipeError
from slimtorch.registry import Registry


def test_register_get_and_names():
    reg: Registry = Registry("thing")
    reg.register("beta")(2)
    reg.register("alpha")(1)
    assert reg.get("alpha") == 1
    assert reg.names() == ["alpha", "beta"]
    assert "beta" in reg


def test_duplicate_name_raises():
    reg: Registry = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        reg.register("a")(2)


def test_unknown_name_suggests_closest():
    reg: Registry = Registry("criterion")
    reg.register("magnitude")(1)
    reg.register("taylor")(2)
    with pytest.raises(RecipeError, match=r"unknown criterion 'magnitud'. Did you mean 'magnitude'\? Known: magnitude, taylor"):
        reg.get("magnitud")

import pytest

from slimtorch.errors import RecipeError
from slimtorch.sweep import parse_grid, variants

BASE = {
    "name": "base",
    "teacher": {"model": "mlp"},
    "stages": [{"finetune": {"epochs": 1}}, {"finetune": {"epochs": 2}}],
}


def test_parse_grid_reads_yaml_scalars():
    axis = parse_grid("finetune.lr=0.001,0.01")
    assert axis.path == "finetune.lr" and axis.values == (0.001, 0.01)


@pytest.mark.parametrize("bad", ["finetune.lr", "=1,2", "finetune.lr="])
def test_parse_grid_rejects_malformed(bad):
    with pytest.raises(RecipeError, match="must look like 'stage.field=v1,v2'"):
        parse_grid(bad)


def test_variants_are_the_cartesian_product_and_address_stages():
    out = variants(BASE, [parse_grid("finetune.lr=0.001,0.01"), parse_grid("stages[1].epochs=3,4"), parse_grid("seed=0,1")])
    assert len(out) == 8
    slug, assignment, recipe = out[-1]
    assert assignment == {"finetune.lr": 0.01, "stages[1].epochs": 4, "seed": 1}
    assert recipe["stages"][0]["finetune"]["lr"] == 0.01  # the first finetune stage
    assert recipe["stages"][1]["finetune"] == {"epochs": 4}
    assert recipe["seed"] == 1 and recipe["name"].startswith("base-")
    assert BASE["stages"][0]["finetune"] == {"epochs": 1}  # the base recipe is untouched


@pytest.mark.parametrize(
    "axis, match",
    [
        ("prune.sparsity=0.5", "'prune' is neither a stage of this recipe"),
        ("stages[5].epochs=1", "index 5 does not exist"),
        ("finetune.epochs=-1", "greater than or equal to 0"),
        ("finetune.lrr=0.1", "Did you mean 'lr'"),
    ],
)
def test_bad_axes_fail_before_running(axis, match):
    with pytest.raises(RecipeError, match=match):
        variants(BASE, [parse_grid(axis)])

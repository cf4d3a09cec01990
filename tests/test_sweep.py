import pytest

from slimtorch.errors import RecipeError
from slimtorch.run.sweep import parse_grid, variants

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
    _slug, assignment, recipe = out[-1]
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


def test_sweep_runs_variants_writes_one_report_and_resumes(tmp_path):
    import json

    from typer.testing import CliRunner

    from slimtorch.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: sw\nteacher: {model: mlp, args: {hidden: [32]}, train: {epochs: 2, lr: 0.01}}\n"
        "stages:\n  - prune: {sparsity: 0.5}\n"
        "evaluate: {latency: {batch_sizes: [1], repeats: 3, warmup: 0}}\n"
    )
    out = tmp_path / "sweep"
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(recipe), "--grid", "prune.sparsity=0.3,0.8", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher", "sparsity-0.3", "sparsity-0.8"]
    nonzero = {m["name"]: m["nonzero_params"] for m in report["models"]}
    assert nonzero["sparsity-0.8"] < nonzero["sparsity-0.3"] < nonzero["teacher"]
    assert (out / "pareto.png").exists() and (out / "report.md").exists()
    assert report["sweep"]["grid"] == {"prune.sparsity": [0.3, 0.8]}
    # a second call reuses the finished variants instead of running them again
    again = runner.invoke(app, ["sweep", str(recipe), "--grid", "prune.sparsity=0.3,0.8", "--out", str(out)])
    assert again.exit_code == 0 and again.output.count("finished earlier, reusing") == 2
    # the base recipe changed: the variants run again (their steps resume only where unchanged), never reused stale
    recipe.write_text(recipe.read_text().replace("prune: {sparsity: 0.5}", "prune: {sparsity: 0.5, criterion: random}"))
    changed = runner.invoke(app, ["sweep", str(recipe), "--grid", "prune.sparsity=0.3,0.8", "--out", str(out)])
    assert changed.exit_code == 0, changed.output
    assert "finished earlier, reusing" not in changed.output
    variant = json.loads((out / "variants" / "sparsity-0.3" / "report.json").read_text())
    assert "random" in json.dumps(variant["recipe"])


def test_a_huge_grid_is_refused_before_any_variant_is_built(tmp_path):
    from typer.testing import CliRunner

    from slimtorch.cli import app

    axes = [parse_grid("finetune.lr=" + ",".join(str(i / 1e4) for i in range(1, 1001))), parse_grid("seed=" + ",".join(map(str, range(1000))))]
    with pytest.raises(RecipeError, match=r"the sweep grid has 1,000,000 variants \(1000 \(finetune.lr\) × 1000 \(seed\)\), over the limit of 1,000"):
        variants(BASE, axes)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: sw\nteacher: {model: mlp}\nstages:\n  - finetune: {epochs: 1}\n")
    result = CliRunner().invoke(app, ["sweep", str(recipe), "--grid", axes[0].path + "=" + ",".join(map(str, axes[0].values)),
                                      "--grid", "seed=" + ",".join(map(str, range(1000))), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "1,000,000 variants" in result.output and not (tmp_path / "out").exists()

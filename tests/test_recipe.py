import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtorch.errors import RecipeError
from slimtorch.recipe import dump_recipe, load_recipe

GOOD = """\
name: digits
seed: 3
data: {source: digits, batch_size: 32, labeled_fraction: 0.1}
teacher: {model: mlp, args: {hidden: [64]}, train: {epochs: 2}}
student: {model: mlp, args: {hidden: [16]}}
stages:
  - finetune: {epochs: 1}
evaluate: {latency: {batch_sizes: [1, 8]}}
"""


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_good_recipe_loads_typed(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    assert r.seed == 3 and r.data.labeled_fraction == 0.1
    assert r.teachers[0].train.epochs == 2
    assert [s.kind for s in r.stages] == ["finetune"]
    assert r.stages[0].config.epochs == 1
    assert r.evaluate.latency.batch_sizes == [1, 8]


def test_yaml_roundtrip(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    again = load_recipe(write(tmp_path, dump_recipe(r)))
    assert again == r


@pytest.mark.parametrize(
    "text, match",
    [
        (GOOD.replace("batch_size: 32", "batch_sise: 32"), r"line 3: unknown key 'batch_sise' in data. Did you mean 'batch_size'\?"),
        (GOOD.replace("seed: 3", "sed: 3"), r"line 2: unknown key 'sed' in the recipe. Did you mean 'seed'\?"),
        (GOOD.replace("finetune: {epochs: 1}", "finetune: {epochz: 1}"), r"line 7: unknown key 'epochz' in stages\[0\].finetune. Did you mean 'epochs'\?"),
        (GOOD.replace("finetune:", "finetun:"), r"line 7: unknown stage 'finetun'. Did you mean 'finetune'\?"),
        (GOOD.replace("epochs: 2", "epochs: two"), r"line 4: teacher.train.epochs: Input should be a valid integer"),
        (GOOD.replace("labeled_fraction: 0.1", "labeled_fraction: 1.5"), r"data.labeled_fraction: Input should be less than or equal to 1; got 1.5"),
        (GOOD.replace("data: {source: digits,", "data: {source: digits"), r"line \d+: invalid YAML"),
        ("- just\n- a list\n", "a recipe must be a mapping"),
        (GOOD.replace("teacher: {model: mlp, args: {hidden: [64]}, train: {epochs: 2}}\n", ""), "missing required key 'teacher'"),
        (GOOD.replace("model: mlp, args: {hidden: [16]}", "args: {hidden: [16]}"), "give `model: <reference>`"),
        (GOOD.replace("  - finetune: {epochs: 1}", "  - {finetune: {}, prune: {}}"), "each stage is one `kind: {settings}` entry"),
        (GOOD.replace("name: digits", "name: my run/1"), "name: the recipe name becomes a folder name"),
        (GOOD.replace("name: digits", "name: '..'"), r"not starting with '\.' or '-' \(no '/', no '\.\.'\); got '\.\.'"),
    ],
)
def test_bad_recipes_name_the_problem(tmp_path, text, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(write(tmp_path, text))


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_dict_recipe_and_teacher_list():
    r = load_recipe({"teacher": [{"model": "mlp"}, {"model": "cnn"}], "stages": ["finetune"]})
    assert [t.model for t in r.teachers] == ["mlp", "cnn"]
    assert r.stages[0].config.epochs == 5


_yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8))
_yaml_values = st.recursive(_yaml_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=10)
_keys = st.sampled_from(["name", "seed", "data", "teacher", "student", "stages", "evaluate", "resources", "target", "junk"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_keys, _yaml_values, max_size=6))
def test_fuzzed_recipes_raise_only_recipe_errors(raw):
    try:
        load_recipe(raw)
    except RecipeError:
        pass

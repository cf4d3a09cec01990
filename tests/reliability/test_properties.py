"""Property and fuzz tests (hypothesis) that complement tests/prune, tests/distill, tests/report, tests/test_recipe.

Already covered there: exact per-layer/global sparsity and N:M patterns of ``compute_masks``; KD loss ≥ 0
and 0 when student = teacher; removed ≡ masked at 50 % for three built-ins; report round trip of
accuracy/size; a dict-level recipe fuzz. Added here: masks through the whole prune stage and a
save/load round trip, every registered loss is zero *iff* the distributions (outputs) agree,
removed ≡ masked for any sparsity/width/rounding, report round trip of every field through the real
writer, and a YAML-*text*-level fuzz of the recipe loader.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from slimtorch import artifact
from slimtorch.core import RunContext
from slimtorch.data.bundle import UNLABELED
from slimtorch.distill.config import DistillConfig
from slimtorch.distill.losses import LOSSES, teacher_target
from slimtorch.errors import ArtifactError, RecipeError, SlimtorchError
from slimtorch.io import atomic_write_json
from slimtorch.measure.measurement import Measurement
from slimtorch.models import build_model
from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.prune.config import LayersConfig
from slimtorch.prune.importance import IMPORTANCE
from slimtorch.prune.masks import masked_modules
from slimtorch.prune.structured import mask_plan_, prune_structured_
from slimtorch.prune.targets import select_layers
from slimtorch.recipe import load_recipe
from slimtorch.report import Report, load_report, validate_report

FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


# -- masks through the prune stage ---------------------------------------------------------------

@settings(max_examples=12, deadline=None, suppress_health_check=FIXTURES)
@given(sparsity=st.floats(0.0, 0.95), hidden=st.lists(st.integers(4, 24), min_size=1, max_size=2), seed=st.integers(0, 100))
def test_prune_stage_reaches_exact_sparsity_and_masked_weights_stay_zero_after_reload(sparsity, hidden, seed, digits, tmp_path_factory):
    torch.manual_seed(seed)
    model = build_model("mlp", {"hidden": hidden}, input_shape=digits.input_shape, num_classes=10)
    tmp = tmp_path_factory.mktemp("p")
    out, _ = PruneStage(PruneConfig(sparsity=sparsity, granularity="weight", scope="layer")).apply(model, RunContext(data=digits, work_dir=tmp))
    for fqn, module in masked_modules(out).items():
        n = module.weight.numel()
        removed = (module.weight == 0).sum().item()
        assert removed == round(sparsity * n), fqn  # per layer, exact up to rounding to whole weights
    artifact.save(out, tmp / "m")
    again = artifact.load(tmp / "m")
    x = digits.example_batch(4)
    torch.testing.assert_close(again(x), out(x), atol=1e-6, rtol=1e-6)
    for fqn in masked_modules(out):
        assert torch.equal(dict(again.named_modules())[fqn].weight == 0, dict(out.named_modules())[fqn].weight == 0)


@settings(max_examples=12, deadline=None, suppress_health_check=FIXTURES)
@given(n=st.integers(1, 5), extra=st.integers(1, 4), width=st.integers(1, 4), seed=st.integers(0, 100))
def test_prune_stage_nm_pattern_holds_in_every_run_of_m(n, extra, width, seed, digits, tmp_path_factory):
    m = n + extra
    torch.manual_seed(seed)
    model = build_model("mlp", {"hidden": [m * width]}, input_shape=(m * 2,), num_classes=3)
    ctx = RunContext(data=_VectorData(m * 2), work_dir=tmp_path_factory.mktemp("nm"))
    out, record = PruneStage(PruneConfig(granularity=f"{n}:{m}")).apply(model, ctx)
    layers = masked_modules(out)
    assert layers, record.details
    for fqn, module in layers.items():
        runs = (module.weight != 0).reshape(-1, m)
        assert (runs.sum(1) == n).all(), fqn


class _VectorData:
    """The bits of a DataBundle the prune stage reads, for inputs of ``features`` floats."""

    task = "classification"
    num_classes = 3

    def __init__(self, features: int) -> None:
        self.input_shape = (features,)
        self.features = features

    def example_batch(self, batch_size: int, split: str = "test") -> torch.Tensor:
        return torch.randn(batch_size, self.features, generator=torch.Generator().manual_seed(0))


# -- losses: non-negative, zero iff the distributions agree ----------------------------------------

_logits = st.lists(st.floats(-8, 8, allow_nan=False), min_size=12, max_size=12).map(lambda v: torch.tensor(v, dtype=torch.float64).view(3, 4))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(LOSSES.names())), z_s=_logits, z_t=_logits, t=st.floats(0.5, 10), shift=st.floats(-5, 5), scale=st.floats(0.1, 10))
def test_every_loss_is_non_negative_and_zero_iff_outputs_agree(name, z_s, z_t, t, shift, scale):
    if name == "cosine":  # the direction of a zero vector is undefined
        assume(bool((z_s.norm(dim=-1) > 1e-3).all() and (z_t.norm(dim=-1) > 1e-3).all()))
    cfg = DistillConfig(loss=name, temperature=t, alpha=0.0)
    unlabeled = torch.full((3,), UNLABELED)
    loss = LOSSES.get(name)
    target = teacher_target([z_t], [1.0], cfg)
    value = loss(z_s, target, unlabeled, cfg)
    assert (value >= -1e-9).all()
    # The same distribution (kd: logits shifted by a constant) / the same output (mse) / direction (cosine).
    same = {"kd": z_t + shift, "mse": z_t, "cosine": z_t * scale}[name]
    assert torch.allclose(loss(same, target, unlabeled, cfg), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    # ...and a clearly different one is penalised.
    if name == "kd":
        gap = (F.softmax(z_s / t, -1) - target).abs().sum(-1)
    elif name == "mse":
        gap = (z_s - target).abs().amax(-1)
    else:
        gap = 1 - F.cosine_similarity(z_s, target, dim=-1)
    assert (value[gap > 1e-3] > 0).all()


# -- removed ≡ masked for any sparsity, width and rounding ----------------------------------------

@settings(max_examples=10, deadline=None, suppress_health_check=FIXTURES)
@given(kind=st.sampled_from(["mlp", "cnn"]), sparsity=st.floats(0.1, 0.8), width=st.integers(6, 20),
       round_to=st.sampled_from([None, 2, 4]), seed=st.integers(0, 50))
def test_removed_equals_masked_for_any_ratio(kind, sparsity, width, round_to, seed, digits):
    torch.manual_seed(seed)
    args = {"mlp": {"hidden": [width, width]}, "cnn": {"channels": [width, width]}}[kind]
    model = build_model(kind, args, input_shape=digits.input_shape, num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = digits.example_batch(8)
    removed = copy.deepcopy(model)
    targets, _ = select_layers(removed, LayersConfig(), x)
    plan = prune_structured_(removed, x, IMPORTANCE.get("magnitude")().tp_importance(), targets, sparsity, round_to=round_to)
    masked = mask_plan_(copy.deepcopy(model), plan.groups)
    with torch.no_grad():
        torch.testing.assert_close(removed(x), masked(x), atol=1e-5, rtol=1e-5)


# -- report JSON round trip through the real writer ------------------------------------------------

_finite = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
_names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def _measurement(draw, name):
    batches = draw(st.lists(st.sampled_from(["1", "8", "64"]), unique=True, max_size=3))
    classes = draw(st.integers(2, 5))
    return Measurement.from_json({
        "name": name, "stage": draw(_names), "params": draw(st.integers(0, 10**9)), "nonzero_params": draw(st.integers(0, 10**9)),
        "size_bytes": draw(st.none() | st.integers(0, 10**10)), "compressed_bytes": draw(st.none() | st.integers(0, 10**10)),
        "threads": draw(st.integers(1, 64)), "notes": draw(st.lists(_names, max_size=2)), "seconds": draw(_finite), "macs": draw(st.none() | st.integers(0, 10**12)),
        "runtime": draw(st.sampled_from(["torch", "onnxruntime"])),
        "latency_ms": {b: {"p50": draw(_finite), "p90": draw(_finite)} for b in batches},
        "metrics": {"accuracy": draw(st.floats(0, 1)), "per_class_accuracy": {str(c): draw(st.floats(0, 1)) for c in range(classes)}},
        "agreement": draw(st.none() | st.floats(0, 1)), "robustness": {"noise_0.1": draw(st.floats(0, 1))},
    })


@st.composite
def _report(draw):
    names = draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    models = [draw(_measurement(n)) for n in names]
    stages = [{"name": n, "seconds": draw(_finite), "status": "done", "notes": [draw(_names)]} for n in names[1:]]
    return Report.create(recipe={"name": "prop", "seed": draw(st.integers(-5, 5))}, baseline=names[0], final=names[-1],
                         models=models, stages=stages, warnings=draw(st.lists(_names, max_size=2))).to_json()


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(report=_report())
def test_report_round_trips_through_the_writer(report, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep")
    atomic_write_json(out / "report.json", report)
    again = load_report(out)
    assert again == json.loads(json.dumps(report))
    validate_report(again)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(report=_report(), cut=st.floats(0, 1))
def test_truncated_report_is_an_artifact_error_never_a_crash(report, cut, tmp_path_factory):
    out = tmp_path_factory.mktemp("cut")
    text = json.dumps(report)
    (out / "report.json").write_text(text[: int(len(text) * cut)])
    try:
        load_report(out)
    except ArtifactError:
        pass


# -- the recipe loader, fuzzed at the YAML text level ---------------------------------------------

GOOD = """\
name: fuzz
seed: 1
data: {source: digits, batch_size: 32, labeled_fraction: 0.5}
teacher: {model: mlp, args: {hidden: [64]}, train: {epochs: 2, lr: 0.001}}
student: {auto: {width: 0.25, depth: 1.0}}
stages:
  - distill: {temperature: 2.0, alpha: 0.5, epochs: 3}
  - prune: {sparsity: 0.5, granularity: '2:4', criterion: magnitude, schedule: oneshot}
  - finetune: {epochs: 1}
  - quantize: {mode: dynamic_int8, runtime: onnxruntime}
evaluate: {latency: {batch_sizes: [1, 8]}}
resources: {max_params: 100000, max_stage_seconds: 60}
"""

_yaml_bits = st.sampled_from([
    ":", " ", "\n", "\t", "-", "- ", "{", "}", "[", "]", ",", "'", '"', "#", "&a", "*a", "!!python/object:os.system", "!!binary",
    "? ", "|", ">", "%YAML 1.1", "---", "...", "~", "null", "1e400", "-1", "0", ".inf", ".nan", "2001-12-14", "yes", "0x1F",
    "prune", "sparsity", "temperature", "stages", "teacher", "\u00e9", "\x00", "\ufeff", "<<: *a",
])


def _assert_only_recipe_errors(text: str) -> None:
    try:
        load_recipe(text if "\n" in text else text + "\n")
    except RecipeError:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_recipe_text_raises_only_recipe_errors(data):
    text = GOOD
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        bit = data.draw(_yaml_bits | st.text(max_size=3))
        if op == "insert":
            text = text[:at] + bit + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + data.draw(st.integers(1, 8)):]
        else:
            text = text[:at] + bit + text[at + len(bit):]
    _assert_only_recipe_errors(text)


@settings(max_examples=200, deadline=None)
@given(lines=st.permutations(GOOD.splitlines()), indent=st.lists(st.integers(0, 4), min_size=12, max_size=12))
def test_shuffled_and_reindented_recipe_raises_only_recipe_errors(lines, indent):
    _assert_only_recipe_errors("\n".join(" " * i + line for i, line in zip(indent, lines)) + "\n")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_raises_only_recipe_errors(text):
    _assert_only_recipe_errors(text)


@pytest.mark.parametrize("text", [
    "a: &a [*a]\nteacher: {model: mlp}\n",  # a recursive alias
    "teacher: &t {model: mlp, args: {hidden: *t}}\n",
    "name: !!binary aGVsbG8=\nteacher: {model: mlp}\n",
    "seed: 1e400\nteacher: {model: mlp}\n",
    "teacher: {model: mlp}\n---\nteacher: {model: cnn}\n",
    "teacher: {model: mlp}\nstages: [{prune: {sparsity: .nan}}]\n",
    "teacher: {model: mlp}\nstages: [{prune: &p {sparsity: 0.5, layers: {include: *p}}}]\n",
    "teacher: {model: mlp}\nstages: [{? [a, b] : {}}]\n",
    "<<: {teacher: {model: mlp}}\nstages: [finetune, {distill: null}]\n",
])
def test_yaml_corner_cases_raise_only_recipe_errors_or_load(text):
    try:
        load_recipe(text)
    except RecipeError:
        pass
    except SlimtorchError as exc:  # pragma: no cover - the assertion message is the point
        pytest.fail(f"{type(exc).__name__} instead of RecipeError: {exc}")

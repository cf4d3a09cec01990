"""Stage tags: what each built-in stage says it is, and the recipe and run rules that read them."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import slimtorch
from slimtorch.core import STAGES, Stage
from slimtorch.errors import RecipeError
from slimtorch.stage_tags import StageConfig, StageTags, tags_of

BASE = {"name": "tags", "data": {"source": "digits"}, "teacher": {"model": "mlp", "args": {"hidden": [16]}}}


def _spec(stages: list[dict]):
    return slimtorch.load_recipe({**BASE, "stages": stages}).stages


@pytest.mark.parametrize(("entry", "trains", "backward", "deploys", "hands_on"), [
    ({"distill": {}}, True, True, False, {"torch"}),
    ({"finetune": {}}, True, True, False, {"torch"}),
    ({"lora": {}}, True, True, False, {"torch"}),
    ({"prune": {}}, False, False, False, {"torch"}),  # one-shot magnitude pruning: no gradients, no training
    ({"prune": {"criterion": "taylor"}}, False, True, False, {"torch"}),
    ({"prune": {"schedule": "iterative"}}, True, True, False, {"torch"}),  # one recovery epoch per step by default
    ({"prune": {"lottery": {"iterations": 2}}}, True, True, False, {"torch"}),
    ({"quantize": {"mode": "dynamic_int8", "runtime": "torch"}}, False, False, True, {"torch_int"}),
    ({"quantize": {"mode": "dynamic_int8", "runtime": "onnxruntime"}}, False, False, True, {"graph"}),
    ({"quantize": {"mode": "dynamic_int8", "runtime": "auto"}}, False, False, True, {"graph", "torch_int"}),
    ({"quantize": {"mode": "static_int8", "runtime": "onnxruntime", "qat": {"epochs": 1}}}, True, True, True, {"graph"}),
    ({"quantize": {"mode": "bf16", "runtime": "torch"}}, False, False, True, {"torch_bf16"}),
    ({"export": {}}, False, False, True, {"graph"}),
])
def test_each_builtin_stage_says_what_it_is(entry, trains, backward, deploys, hands_on):
    spec = _spec([entry])[0]
    tags = spec.tags
    assert (tags.trains, tags.backward, tags.deploys, set(tags.hands_on)) == (trains, backward, deploys, hands_on)
    stage = STAGES.get(spec.kind)(spec.config)
    assert stage.tags() == tags  # the stage answers with its config's tags


def test_export_names_the_runtime_its_graph_is_for_and_only_gguf_takes_torch_int_layers():
    onnx, gguf, pte = (_spec([{"export": {"format": f}}])[0].tags for f in ("onnx", "gguf", "executorch"))
    assert (onnx.runtime, gguf.runtime, pte.runtime) == ("onnxruntime", "llama.cpp", "ExecuTorch")
    assert "torch_int" in gguf.takes and "torch_int" not in onnx.takes and "torch_int" not in pte.takes


def test_refusal_reasons_follow_what_is_handed_on():
    graph = StageTags(hands_on=frozenset({"graph"}), runtime="llama.cpp")
    assert graph.refusal(StageTags()) == ("turns the model into a llama.cpp graph with no torch layers left to prune, train, "
                                          "quantize or export")
    assert "int8/int4 kernels" in StageTags(hands_on=frozenset({"torch_int"})).refusal(StageTags())
    bf16 = StageTags(hands_on=frozenset({"torch_bf16"}))
    assert bf16.refusal(StageTags()) is None  # float torch stages work on bfloat16 weights
    assert "bfloat16" in bf16.refusal(StageTags(takes=frozenset({"torch"})))


def test_a_gguf_export_may_follow_torch_int4_quantization_but_not_onnxruntime_or_auto():
    _spec([{"quantize": {"mode": "int4_weight_only", "runtime": "torch"}}, {"export": {"format": "gguf"}}])
    with pytest.raises(RecipeError, match=r"quantize \(mode dynamic_int8, runtime onnxruntime\), which turns the model into an "
                                          r"onnxruntime graph"):
        _spec([{"quantize": {"mode": "dynamic_int8", "runtime": "onnxruntime"}}, {"export": {"format": "gguf"}}])
    with pytest.raises(RecipeError, match=r"runtime auto\), which turns the model into an onnxruntime graph"):
        _spec([{"quantize": {"mode": "dynamic_int8", "runtime": "auto"}}, {"export": {"format": "gguf"}}])


def test_the_order_check_looks_past_the_next_stage():
    # prune works on bfloat16 weights, but the onnx export two stages later cannot
    with pytest.raises(RecipeError, match=r"stages\[2\] export cannot run after stages\[0\] quantize \(mode bf16, runtime torch\).*"
                                          r"use quantize \{mode: fp16, runtime: onnxruntime\}"):
        _spec([{"quantize": {"mode": "bf16", "runtime": "torch"}}, {"prune": {}}, {"export": {}}])


def test_a_target_refuses_every_deploying_stage_by_its_tag():
    with pytest.raises(RecipeError, match="remove the export stage"):
        slimtorch.load_recipe({**BASE, "target": {"size_mb": 0.01}, "stages": [{"finetune": {"epochs": 1}}, {"export": {}}]})


def test_a_user_stage_with_a_plain_pydantic_config_gets_default_tags_and_a_tagged_one_its_own():
    class PlainConfig(BaseModel):
        factor: float = 1.0

    class ToGraphConfig(StageConfig):
        def stage_tags(self) -> StageTags:
            return StageTags(deploys=True, hands_on=frozenset({"graph"}), runtime="TensorRT")

    assert tags_of(PlainConfig()) == StageTags()

    class ToGraphStage(Stage[ToGraphConfig], kind="test_tags_to_graph"):
        def apply(self, model, ctx):
            return model, self.record()

    try:
        with pytest.raises(RecipeError, match=r"stages\[1\] finetune cannot run after stages\[0\] test_tags_to_graph, which turns "
                                              r"the model into a TensorRT graph"):
            _spec([{"test_tags_to_graph": {}}, {"finetune": {}}])
        with pytest.raises(RecipeError, match="remove the test_tags_to_graph stage"):
            slimtorch.load_recipe({**BASE, "target": {"size_mb": 0.01}, "stages": [{"test_tags_to_graph": {}}]})
    finally:
        STAGES._items.pop("test_tags_to_graph")  # keep the registry to the built-in stages for the other tests

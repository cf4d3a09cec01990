"""Quantization-aware training for onnxruntime dynamic int8 (quantize: {mode: dynamic_int8, qat: ...})."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from pydantic import ValidationError

from slimtorch.core import RunContext
from slimtorch.measure.accuracy import predict
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.quantize.dynamic_qat import (
    DynamicInt8Linear,
    int16_pair_excess,
    prepare_,
    strip_,
    train_dynamic_qat,
    u8s8_saturates,
)
from slimtorch.quantize.smooth import SmoothedLinear, smooth_


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return ((out - reference) ** 2).mean().item() / (reference**2).mean().item()


def _kl(out: torch.Tensor, reference: torch.Tensor) -> float:
    """KL(teacher ‖ int8) of the class probabilities."""
    return torch.nn.functional.kl_div(out.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="batchmean").item()


def test_the_simulated_int32_sums_are_what_onnxruntime_computes_on_this_cpu():
    # u8 activations near 255 against int8 weights near ±127: pairs of products pass int16 without VNNI
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (37, 65), dtype=np.uint8), rng.integers(-127, 128, (65, 19), dtype=np.int8)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b", "za"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [37, 65])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [37, 19])],
                              [helper.make_tensor("b", TensorProto.INT8, [65, 19], b.tobytes(), raw=True),
                               helper.make_tensor("za", TensorProto.UINT8, [], [131])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"a": a})[0]).double()
    qa, qb = torch.from_numpy(a).float(), torch.from_numpy(b).float().T
    exact = (qa.double() - 131) @ qb.double().T
    excess = int16_pair_excess(qa, qb, chunk=999).double()  # several row chunks
    pairs = np.pad(a.astype(np.int64), ((0, 0), (0, 1)))[:, None].reshape(37, 1, 33, 2) \
        * np.pad(b.astype(np.int64).T, ((0, 0), (0, 1)))[None].reshape(1, 19, 33, 2)
    pair_sums = pairs.sum(-1)  # (37, 19, 33): vpmaddubsw's int16 lanes before they saturate
    torch.testing.assert_close(excess, torch.from_numpy((np.clip(pair_sums, -32768, 32767) - pair_sums).sum(-1)).double())
    assert bool((excess != 0).any())  # the data does reach the int16 limit
    torch.testing.assert_close(got, exact + excess if u8s8_saturates() else exact, rtol=0, atol=0)
    assert u8s8_saturates() == bool((got != exact).any())


@pytest.mark.parametrize(("smooth", "reduce_range"), [pytest.param(None, False, id="None"), pytest.param(0.5, False, id="0.5"),
                                                      pytest.param(None, True, id="7-bit-weights")])
def test_fake_quantized_model_computes_what_onnxruntime_dynamic_int8_computes(outlier_mlp, digits, tmp_path, smooth, reduce_range):
    ctx = RunContext(data=digits, seed=0, work_dir=tmp_path)
    model = copy.deepcopy(outlier_mlp)
    if smooth is not None:
        smooth_(model, [x for (x, _), _i in zip(digits.loader("train"), range(4), strict=False)], smooth)
    ort, _ = QuantizeStage(QuantizeConfig(mode="dynamic_int8", reduce_range=reduce_range)).apply(model, ctx)
    fake = copy.deepcopy(model)
    assert prepare_(fake, reduce_range=reduce_range) == 2 and sum(isinstance(m, DynamicInt8Linear) for m in fake.modules()) == 2
    float_out, _ = predict(model, digits.loader("test"))
    ort_out, _ = predict(ort, digits.loader("test"))
    fake_out, _ = predict(fake.eval(), digits.loader("test"))
    # the simulation sits far closer to onnxruntime's int8 than the float model does (ties may round apart)
    assert _relative_error(fake_out, ort_out) < 0.05 * _relative_error(float_out, ort_out)
    strip_(fake)
    assert not any(isinstance(m, DynamicInt8Linear) for m in fake.modules())
    assert sum(isinstance(m, SmoothedLinear) for m in fake.modules()) == (2 if smooth else 0)


def test_qat_lowers_the_int8_error_and_keeps_pruned_zeros(mlp, digits, tmp_path):
    model = mlp.eval()  # the trained digits MLP (its int8 error: weight rounding and the hidden activations' ranges)
    teacher = copy.deepcopy(model)
    ctx = RunContext(data=digits, seed=0, work_dir=tmp_path, teacher=teacher)
    reference, _ = predict(teacher, digits.loader("test"))
    plain, _ = QuantizeStage(QuantizeConfig(mode="dynamic_int8")).apply(model, ctx)
    qat = {"epochs": 3, "lr": 1e-3}  # distillation at the default temperature 4
    trained, record = QuantizeStage(QuantizeConfig(mode="dynamic_int8", qat=qat)).apply(model, ctx)
    errors = {name: _kl(predict(m, digits.loader("test"))[0], reference) for name, m in (("ptq", plain), ("qat", trained))}
    assert errors["qat"] < 0.8 * errors["ptq"], errors  # measured: KL 2.3e-5 -> 1.4e-5
    q = record.details["dynamic_qat"]
    assert q["fake_quant_linears"] == 3 and q["steps"] == 60 and q["loss"] == "distillation from the teacher"
    assert any(n.startswith("dynamic-int8-aware training (distillation from the teacher") for n in record.notes)

    pruned = copy.deepcopy(model)
    first = pruned.net[1]
    with torch.no_grad():
        first.weight[:, ::3] = 0.0
    zeros = first.weight == 0
    fresh = RunContext(data=digits, seed=0, work_dir=tmp_path / "pruned", teacher=teacher)  # no checkpoint of the run above
    train_dynamic_qat(pruned, fresh, QuantizeConfig(mode="dynamic_int8", qat={"epochs": 1, "lr": 1e-2, "max_steps": 5}).qat)  # type: ignore[arg-type]
    assert pruned.net[1] is first and bool((first.weight[zeros] == 0).all())
    assert not bool((first.weight[~zeros] == model.net[1].weight[~zeros]).all())  # it did train


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "dynamic_int8", "qat": {"max_steps": 0}}, "max_steps\n  Input should be greater than or equal to 1"),
    ({"mode": "dynamic_int8", "runtime": "torch", "qat": {}}, r"or dynamic_int8 \(runtime: onnxruntime\); got mode 'dynamic_int8', runtime 'torch'"),
    ({"mode": "static_int8", "qat": {}, "smooth": 0.5}, r"with qat only dynamic_int8\); got mode 'static_int8'"),
])
def test_bad_qat_settings_are_refused_clearly(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        QuantizeConfig(**kwargs)
    assert QuantizeConfig(mode="dynamic_int8", smooth=0.8, qat={"max_steps": 100}).qat is not None

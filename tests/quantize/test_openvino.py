"""runtime: openvino and quantizer: nncf — parity with torch, int8 layers really int8, artifacts, threads, clear errors.

Tests that run OpenVINO or NNCF skip when the ``openvino`` extra is not installed; the error paths for a
missing package and the config checks run either way.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch

from slimtorch import artifact
from slimtorch.errors import ArtifactError, MissingExtraError
from slimtorch.export.onnx import export_onnx
from slimtorch.measure.accuracy import task_metric
from slimtorch.measure.latency import pinned_threads
from slimtorch.measure.macs import count_macs
from slimtorch.measure.params import count_params
from slimtorch.quantize import QuantizeConfig, QuantizeStage
from slimtorch.runtime import OpenVINOModule, OrtModule, onnx_initializer_stats

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_NNCF = HAS_OPENVINO and importlib.util.find_spec("nncf") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO not installed: pip install 'slimtorch[openvino]'")
needs_nncf = pytest.mark.skipif(not HAS_NNCF, reason="NNCF/OpenVINO not installed: pip install 'slimtorch[openvino]'")
# measure/ reads params and MACs from the graph, and pins the thread count, of models whose runtime it knows.
MLP_LAYERS = 3  # the digits MLP 64-128-64-10: three Gemm layers


def _onnx_ops(onnx_bytes: bytes) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node)


@needs_openvino
def test_fp32_matches_torch_at_any_batch_size(mlp, digits, ctx):
    out, record = QuantizeStage(QuantizeConfig(mode="fp32", runtime="openvino")).apply(mlp, ctx)
    assert isinstance(out, OpenVINOModule) and out.slimtorch_runtime == "openvino"
    with torch.no_grad():
        for batch in (1, 5, 64):  # the batch axis stays dynamic
            x = digits.example_batch(batch)
            torch.testing.assert_close(out(x), mlp(x), atol=1e-4, rtol=1e-4)
    facts = record.details["openvino"]
    assert facts["inference_precision"] == "f32" and facts["threads"] == 1
    assert (facts["weight_layers"], facts["int8_weight_layers"]) == (MLP_LAYERS, 0)
    assert "OpenVINO" in record.details["backend"] and record.details["argmax_agreement"] == 1.0


@needs_openvino
def test_hf_encoder_runs_with_dict_inputs_and_a_default_attention_mask(tiny_bert, token_batch):
    model = OpenVINOModule(export_onnx(tiny_bert, token_batch(2, 5)))
    with torch.no_grad():
        for batch in (token_batch(1, 3), token_batch(4, 9, pad_from=5)):  # dynamic batch and sequence axes, padding
            torch.testing.assert_close(model(**batch), tiny_bert(**batch).float(), atol=1e-4, rtol=1e-4)
        ids = token_batch(2, 6)["input_ids"]
        torch.testing.assert_close(model(input_ids=ids), model(input_ids=ids, attention_mask=torch.ones_like(ids)))


@needs_openvino
def test_static_int8_from_qdq_runs_every_layer_in_int8_and_keeps_accuracy(mlp, digits, ctx):
    before = task_metric(mlp, digits, "test")
    out, record = QuantizeStage(QuantizeConfig(mode="static_int8", runtime="openvino")).apply(mlp, ctx)
    facts = record.details["openvino"]
    assert facts["weight_layers"] == facts["int8_weight_layers"] == MLP_LAYERS
    assert task_metric(out, digits, "test") >= before - 0.02
    assert "quantized by onnxruntime" in record.details["backend"]
    x = digits.example_batch(64)  # the same QDQ bytes in onnxruntime agree with OpenVINO's int8 run
    assert (OrtModule(out.onnx_bytes)(x).argmax(-1) == out(x).argmax(-1)).float().mean() >= 0.95


@needs_openvino
def test_qat_graph_runs_in_openvino_with_parity_recorded(mlp, digits, ctx):
    cfg = QuantizeConfig(mode="static_int8", runtime="openvino", calibration_batches=4, qat={"epochs": 1})
    out, record = QuantizeStage(cfg).apply(mlp, ctx)
    assert isinstance(out, OpenVINOModule) and "QAT" in record.details["backend"]
    assert record.details["openvino"]["int8_weight_layers"] == MLP_LAYERS
    assert record.details["qat"]["parity_vs_fake_quant"]["argmax_agreement"] >= 0.95


@needs_nncf
def test_nncf_graph_runs_in_onnxruntime_and_openvino(mlp, digits, ctx):
    before = task_metric(mlp, digits, "test")
    on_ort, record = QuantizeStage(QuantizeConfig(mode="static_int8", quantizer="nncf")).apply(mlp, ctx)
    on_ov, ov_record = QuantizeStage(QuantizeConfig(mode="static_int8", runtime="openvino", quantizer="nncf")).apply(mlp, ctx)
    assert isinstance(on_ort, OrtModule) and isinstance(on_ov, OpenVINOModule)
    assert "NNCF" in record.details["backend"] and record.details["calibration_batches"] == 8
    ops = _onnx_ops(on_ort.onnx_bytes)
    assert ops["QuantizeLinear"] >= MLP_LAYERS and ops["DequantizeLinear"] >= 2 * MLP_LAYERS
    assert ov_record.details["openvino"]["int8_weight_layers"] == MLP_LAYERS
    for model in (on_ort, on_ov):
        assert task_metric(model, digits, "test") >= before - 0.02


@needs_nncf
def test_nncf_keeps_excluded_layers_float(mlp, ctx):
    out, record = QuantizeStage(QuantizeConfig(mode="static_int8", quantizer="nncf", exclude=["net.1/"])).apply(mlp, ctx)
    graph = onnx.load_from_string(out.onnx_bytes).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    weights = {g.name: produced_by.get(g.input[1], "initializer") for g in graph.node if g.op_type == "Gemm"}
    assert record.details["excluded_nodes"] == ["/net/net.1/Gemm"]
    assert weights.pop("/net/net.1/Gemm") == "initializer"  # a float weight, no DequantizeLinear
    assert set(weights.values()) == {"DequantizeLinear"}


@needs_openvino
def test_artifact_round_trip_keeps_threads_and_loads_in_a_fresh_process(mlp, digits, ctx, tmp_path):
    out, _ = QuantizeStage(QuantizeConfig(mode="static_int8", runtime="openvino", threads=2)).apply(mlp, ctx)
    artifact.save(out, tmp_path / "ov")
    assert artifact.read_spec(tmp_path / "ov")["format"] == "openvino"
    assert json.loads((tmp_path / "ov" / "openvino_meta.json").read_text())["precision"] == "f32"
    loaded = artifact.load(tmp_path / "ov")
    assert isinstance(loaded, OpenVINOModule) and loaded.threads == 2 and loaded.runtime_facts()["threads"] == 2
    x = digits.example_batch(16)
    torch.testing.assert_close(loaded(x), out(x), atol=0, rtol=0)
    code = f"import slimtorch; print(type(slimtorch.load({str(tmp_path / 'ov')!r})).__name__)"  # the format registers itself
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip().splitlines()[-1] == "OpenVINOModule"


@needs_openvino
def test_corrupted_artifacts_say_what_to_do(mlp, digits, tmp_path):
    artifact.save(OpenVINOModule(export_onnx(mlp, digits.example_batch(2))), tmp_path / "ov")
    (tmp_path / "ov" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ArtifactError, match="not a model OpenVINO can read.*re-run the stage"):
        artifact.load(tmp_path / "ov")
    (tmp_path / "ov" / "openvino_meta.json").write_text(json.dumps({"threads": 1, "precision": "f64"}))
    with pytest.raises(ArtifactError, match="openvino_meta.json is corrupted"):
        artifact.load(tmp_path / "ov")


@needs_openvino
def test_setting_threads_recompiles_with_that_count(mlp, digits):
    model = OpenVINOModule(export_onnx(mlp, digits.example_batch(2)), threads=1)
    x = digits.example_batch(8)
    expected = model(x)
    assert model.runtime_facts()["threads"] == 1
    model.threads = 2
    assert model.runtime_facts()["threads"] == 2
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(ValueError, match="precision must be 'f32' or 'bf16'"):
        OpenVINOModule(model.onnx_bytes, precision="f16")  # type: ignore[arg-type]


@needs_openvino
def test_measure_reads_the_graph_and_pins_threads_like_onnxruntime(mlp, digits):
    graph = export_onnx(mlp, digits.example_batch(2))
    ort, ov = OrtModule(graph), OpenVINOModule(graph, threads=1)
    x = digits.example_batch(1)
    assert count_params(ov) == count_params(ort) == onnx_initializer_stats(graph)["params"] > 0
    assert count_macs(ov, x) == count_macs(ort, x) > 0
    with pinned_threads(ov, 2):
        assert ov.threads == 2
    assert ov.threads == 1


def test_missing_openvino_names_the_extra(mlp, digits, ctx, tmp_path, monkeypatch):
    artifact.save(OpenVINOModule(export_onnx(mlp, digits.example_batch(2))), tmp_path / "ov")  # saving needs no OpenVINO
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails, installed or not
    with pytest.raises(MissingExtraError, match=r"runtime: openvino needs .*pip install 'slimtorch\[openvino\]'"):
        QuantizeStage(QuantizeConfig(mode="fp32", runtime="openvino")).apply(mlp, ctx)
    with pytest.raises(MissingExtraError, match=r"pip install 'slimtorch\[openvino\]'"):
        artifact.load(tmp_path / "ov")


def test_missing_nncf_names_the_extra(mlp, ctx, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(MissingExtraError, match=r"quantizer: nncf needs NNCF.*pip install 'slimtorch\[openvino\]'"):
        QuantizeStage(QuantizeConfig(mode="static_int8", quantizer="nncf")).apply(mlp, ctx)


@pytest.mark.parametrize(("fields", "message"), [
    ({"mode": "dynamic_int8", "runtime": "openvino"}, r"valid modes for openvino: fp32, static_int8"),
    ({"mode": "fp32", "runtime": "onnxruntime"}, r"fp32 runs on runtime: openvino; an fp32 onnxruntime model is what the export stage returns"),
    ({"mode": "dynamic_int8", "quantizer": "nncf"}, r"quantizer: nncf writes a static int8 graph"),
    ({"mode": "static_int8", "quantizer": "nncf", "qat": {"epochs": 1}}, r"cannot be combined with qat, max_drop or sensitivity"),
    ({"mode": "static_int8", "quantizer": "nncf", "calibrate_method": "entropy"}, r"uses NNCF's defaults \(got calibrate_method 'entropy'"),
    ({"mode": "static_int8", "runtime": "openvino", "max_drop": 0.01}, r"max_drop and quantize.sensitivity work on onnxruntime int8"),
    ({"mode": "static_int8", "runtime": "torch", "qat": {"epochs": 1}}, r"valid modes for torch"),
])
def test_config_errors_name_the_fix(fields, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(**fields)


def test_backend_and_dump_round_trip_without_running_anything():
    cfg = QuantizeConfig(mode="static_int8", runtime="openvino", quantizer="nncf", threads=2)
    assert QuantizeConfig(**cfg.model_dump()) == cfg
    if HAS_NNCF:
        assert cfg.backend().startswith("OpenVINO ") and "quantized by NNCF" in cfg.backend()


def test_example_recipe_validates():
    from slimtorch.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "examples" / "quant_openvino.yaml")
    runtimes = {(s.config.runtime, s.config.quantizer) for s in recipe.stages if s.kind == "quantize"}
    assert ("openvino", "nncf") in runtimes

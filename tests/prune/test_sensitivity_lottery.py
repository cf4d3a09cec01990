import itertools

import pytest

from slimtorch.prune import PruneConfig, PruneStage
from slimtorch.prune.details import SensitivityScan
from slimtorch.prune.schedule import sparsity_schedule, step_ratios
from slimtorch.prune.sensitivity import auto_ratios


def test_scan_plots_and_reaches_params_target(mlp, ctx):
    cfg = PruneConfig(sensitivity={"sparsities": [0.5, 0.9]}, target={"params": 0.3})
    _, record = PruneStage(cfg).apply(mlp, ctx)
    d = record.details
    assert set(d["sensitivity"]["layers"]) == {"net.1", "net.3"}
    assert d["sensitivity_plot"].endswith("sensitivity.png")
    assert d["target_achieved"] <= 0.3 + 0.02
    from pathlib import Path

    assert Path(d["sensitivity_plot"]).read_bytes()[:4] == b"\x89PNG"


def test_structured_macs_target_reported(resnet, ctx):
    _, record = PruneStage(PruneConfig(granularity="filter", target={"macs": 0.6})).apply(resnet, ctx)
    assert record.details["macs_after"] < record.details["macs_before"]
    assert record.details["target_achieved"] is not None


def test_auto_ratios_prefers_insensitive_layer():
    scan = SensitivityScan(0.9, {"a": [(0.5, 0.89), (0.9, 0.88)], "b": [(0.5, 0.5), (0.9, 0.1)]})
    assert auto_ratios(scan, {"a": 100, "b": 100}, 80) == {"a": 0.9, "b": 0.0}


def test_schedules():
    assert sparsity_schedule("oneshot", 0.8, 5) == [0.8]
    cubic = sparsity_schedule("cubic", 0.9, 4)
    assert cubic[-1] == pytest.approx(0.9) and all(a < b for a, b in itertools.pairwise(cubic))
    it = sparsity_schedule("iterative", 0.75, 2)
    assert it == pytest.approx([0.5, 0.75]) and step_ratios(it) == pytest.approx([0.5, 0.5])


@pytest.mark.slow
def test_lottery_reports_ticket_and_control(digits, ctx):
    from slimtorch.models import build_model

    model = build_model("mlp", {"hidden": [64]}, input_shape=digits.input_shape, num_classes=10)
    cfg = PruneConfig(sparsity=0.8, lottery={"iterations": 2, "epochs": 6, "rewind_epoch": 1, "lr": 3e-3})
    _out, record = PruneStage(cfg).apply(model, ctx)
    lot = record.details["lottery"]
    assert {"dense_test", "ticket_test", "random_reinit_test"} <= set(lot)
    assert [n for n, _ in record.extra_models] == ["lottery_dense", "lottery_random_reinit"]
    assert record.details["nonzero_params_after"] < 0.35 * record.details["params_after"]
    assert lot["ticket_test"] > 0.8

"""Hardware honesty warnings with known answers."""

from __future__ import annotations

from slimtorch.report import Report, hardware_warnings


def _report(models):
    return Report.create(recipe={}, baseline=models[0].name, final=models[-1].name, models=models).to_json()


def test_mac_cut_without_speedup_is_flagged(make_measurement):
    slow = _report([make_measurement("base", "t", 100, 100, 400, 1000, 1.0, 1.0, 0.9),
                    make_measurement("small", "p", 10, 10, 40, 100, 0.8, 0.9, 0.9)])
    (w,) = slow["hardware_warnings"]
    assert w.startswith("small: MACs fell 10.0×") and "efficiency 0.12" in w


def test_proportional_speedup_is_not_flagged(make_measurement):
    fast = _report([make_measurement("base", "t", 100, 100, 400, 1000, 1.0, 1.0, 0.9),
                    make_measurement("small", "p", 10, 10, 40, 100, 0.15, 0.15, 0.9)])
    assert fast["hardware_warnings"] == []


def test_sparsity_stored_dense_is_flagged_once(make_measurement):
    models = [make_measurement("base", "t", 100, 100, 400, 100, 1.0, 1.0, 0.9),
              make_measurement("pruned", "p", 100, 30, 400, 100, 1.0, 1.0, 0.9, compressed=200),
              make_measurement("tuned", "f", 100, 30, 400, 100, 1.0, 1.0, 0.9, compressed=200)]
    (w,) = hardware_warnings(models, models[0].name)
    assert w.startswith("pruned: 70% of its weights are zero")
    assert "saves space only after compression" in w and "no speed on dense kernels" in w
    assert "(2.00× smaller)" in w


def test_structured_pruning_is_not_flagged_as_dense(make_measurement):
    models = [make_measurement("base", "t", 100, 100, 400, 100, 1.0, 1.0, 0.9),
              make_measurement("slim", "p", 50, 50, 200, 50, 0.5, 0.5, 0.9)]
    assert hardware_warnings(models, models[0].name) == []


def test_a_ratio_across_devices_is_called_out_instead_of_an_efficiency(make_measurement):
    gpu_base = make_measurement("base", "t", 100, 100, 400, 1000, 1.0, 1.0, 0.9)
    gpu_base.device = "cuda:0"
    on_cpu = make_measurement("int8", "q", 10, 10, 40, 100, 0.8, 0.9, 0.9, runtime="onnxruntime")  # 10x MACs, no speedup
    also_cpu = make_measurement("int8_b", "q", 10, 10, 40, 100, 0.8, 0.9, 0.9, runtime="onnxruntime")
    (w,) = _report([gpu_base, on_cpu, also_cpu])["hardware_warnings"]  # one per device, no MAC-efficiency claim
    assert w.startswith("int8 was timed on cpu (onnxruntime) and the baseline base on cuda:0")
    on_gpu = make_measurement("small", "p", 10, 10, 40, 100, 0.8, 0.9, 0.9)
    on_gpu.device = "cuda:0"
    (w,) = _report([gpu_base, on_gpu])["hardware_warnings"]
    assert w.startswith("small: MACs fell 10.0×") and "(torch on cuda:0, 1 thread(s))" in w


def test_a_stage_that_made_its_model_slower_is_called_out_with_a_runtime_hint(make_measurement):
    """ORT dynamic int8 of a CNN (ConvInteger) ran 5x slower than its float input: said plainly, with the fix."""
    models = [make_measurement("base", "teacher", 100, 100, 400, 100, 1.0, 4.0, 0.9),
              make_measurement("1_distill", "distill", 50, 50, 200, 50, 0.5, 2.0, 0.9),
              make_measurement("2_quantize", "quantize", 50, 50, 60, 50, 0.5, 10.0, 0.9, runtime="onnxruntime")]
    slower = [w for w in hardware_warnings(models, "base") if " is slower than " in w]
    assert slower == [w for w in slower if w.startswith("2_quantize is slower than 1_distill, the model its quantize stage started from")]
    assert len(slower) == 1 and "10 ms against 2 ms, 5.00× slower" in slower[0] and "static_int8" in slower[0]


def test_a_stage_inside_the_noise_or_faster_is_not_called_slower(make_measurement):
    models = [make_measurement("base", "teacher", 100, 100, 400, 100, 1.0, 4.0, 0.9),
              make_measurement("1_distill", "distill", 50, 50, 200, 50, 0.5, 2.0, 0.9),
              make_measurement("2_prune", "prune", 25, 25, 100, 25, 0.6, 2.2, 0.9)]  # 1.2x and 1.1x: within tolerance
    assert not [w for w in hardware_warnings(models, "base") if " is slower than " in w]


def test_a_stage_is_compared_with_the_model_it_started_from_not_a_side_model(make_measurement):
    """2_quantize started from 1_distill; the labels-only control reported between them is not its input."""
    models = [make_measurement("base", "teacher", 100, 100, 400, 100, 1.0, 4.0, 0.9),
              make_measurement("1_distill", "distill", 50, 50, 200, 50, 0.5, 2.0, 0.9),
              make_measurement("1_distill_labels_only", "distill", 50, 50, 200, 50, 0.1, 0.4, 0.8),
              make_measurement("2_quantize", "quantize", 50, 50, 60, 50, 0.5, 2.0, 0.9, runtime="onnxruntime")]
    assert not [w for w in hardware_warnings(models, "base") if " is slower than " in w]

"""``export: {format: executorch}``: a .pte with the XNNPACK delegate, run by ExecuTorch's own runtime, saved and loaded.

The runtime tests need the executorch package (``pip install 'slimtorch[executorch]'``; see the README for the torch it
was run with); without it the stage must fail in one line naming the extra.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from pydantic import ValidationError

from slimtorch import artifact
from slimtorch.errors import MissingExtraError
from slimtorch.export import ExportConfig, ExportStage
from slimtorch.measure.params import count_nonzero, count_params
from slimtorch.models import build_model

HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None
needs_executorch = pytest.mark.skipif(not HAS_EXECUTORCH, reason="executorch not installed: pip install 'slimtorch[executorch]'")


@pytest.fixture(scope="module")
def cnn(digits):
    from torch.nn import functional as F

    from slimtorch.core import RunContext
    from slimtorch.train.loop import TrainConfig, fit

    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [8, 16]}, input_shape=digits.input_shape, num_classes=10)
    fit(model, lambda m, x, y: F.cross_entropy(m(x), y), digits.loader("train", shuffle=True), TrainConfig(epochs=3, lr=3e-3),
        RunContext(data=digits))
    return model.eval()


def test_int8_is_an_executorch_option():
    with pytest.raises(ValidationError, match="format: executorch"):
        ExportConfig(int8=True)


@pytest.mark.skipif(HAS_EXECUTORCH, reason="checks the message shown when executorch is absent")
def test_without_executorch_the_stage_fails_in_one_line_naming_the_extra(cnn, ctx):
    with pytest.raises(MissingExtraError, match=r"executorch.*pip install 'slimtorch\[executorch\]'") as info:
        ExportStage(ExportConfig(format="executorch")).apply(copy.deepcopy(cnn), ctx)
    assert "\n" not in str(info.value)


@needs_executorch
def test_float_program_matches_torch_and_round_trips_through_load(cnn, ctx, digits, tmp_path):
    pte, record = ExportStage(ExportConfig(format="executorch")).apply(copy.deepcopy(cnn), ctx)
    assert record.details["max_abs_diff"] < 1e-4 and record.details["pte_bytes"] == len(pte.pte)
    x = digits.example_batch(8)
    torch.testing.assert_close(pte(x), cnn(x), atol=1e-4, rtol=0)
    artifact.save(pte, tmp_path / "m")
    loaded = artifact.load(tmp_path / "m")
    assert (tmp_path / "m" / "model.pte").read_bytes() == pte.pte
    torch.testing.assert_close(loaded(x), pte(x), atol=0, rtol=0)
    assert loaded.source_counts == pte.source_counts and pte.source_counts.params == count_params(cnn)


def test_a_program_is_counted_on_the_torch_model_it_was_exported_from(cnn, digits):
    from slimtorch.export.executorch import PteModule, counts_of
    from slimtorch.measure.macs import count_macs_noted

    program = PteModule(b"weights only ExecuTorch reads", source_counts=counts_of(cnn, digits.example_batch(4)))
    assert count_params(program) == count_params(cnn) > 0 and count_nonzero(program) == count_nonzero(cnn)
    macs, notes = count_macs_noted(program, digits.example_batch(2))
    assert macs == count_macs_noted(cnn, digits.example_batch(2))[0] > 0 and "exported from" in notes[0]
    assert count_params(PteModule(b"")) == 0  # a program with no counts: nothing to read the weights with


@needs_executorch
def test_int8_program_is_smaller_and_agrees_with_torch(cnn, ctx, digits):
    fp32, _ = ExportStage(ExportConfig(format="executorch")).apply(copy.deepcopy(cnn), ctx)
    int8, record = ExportStage(ExportConfig(format="executorch", int8=True)).apply(copy.deepcopy(cnn), ctx)
    assert record.details["int8"] and int8.size_bytes < fp32.size_bytes  # a tiny CNN: the program overhead is most of the file
    x = digits.example_batch(64)
    agree = (int8(x).argmax(1) == cnn(x).argmax(1)).float().mean().item()
    assert agree >= 0.9, agree
    print(f"fp32 .pte {fp32.size_bytes} B, int8 .pte {int8.size_bytes} B, top-1 agreement {agree:.3f}")

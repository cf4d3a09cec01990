"""ExecuTorch export: a ``.pte`` program with the XNNPACK delegate (optionally int8), run by ExecuTorch's own runtime.

The documented path (pytorch.org/executorch, "Exporting to ExecuTorch"): ``torch.export.export`` →
``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` → ``.to_executorch().buffer``; int8 goes
through XNNPACK's PT2E quantizer (``prepare_pt2e`` → calibrate → ``convert_pt2e``) before lowering. The program is
traced at batch 1, the batch a phone runs; :class:`PteModule` runs larger batches row by row through
``executorch.runtime.Runtime``, so the report card's parity and latency are ExecuTorch's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from slimtorch.artifact import FORMATS, ArtifactFormat
from slimtorch.core import Batch
from slimtorch.errors import ArtifactError, UnsupportedModuleError
from slimtorch.export.onnx import plain_copy
from slimtorch.io import atomic_write_bytes, read_json
from slimtorch.measure.macs import count_macs
from slimtorch.measure.params import SourceCounts, count_nonzero, count_params
from slimtorch.models.attrs import set_attrs_
from slimtorch.optional import import_optional

PTE_FILE = "model.pte"
INFO_FILE = "executorch.json"
# ExecuTorch's wheels are built against one torch release each; executorch has no torch pin in its metadata.
REQUIREMENT = "the executorch package (ExecuTorch 1.x with its XNNPACK backend, built for the installed torch)"


def executorch(module: str = "executorch") -> Any:
    """Import ``module`` from ExecuTorch, or fail in one line naming the extra."""
    return import_optional(module, extra="executorch", feature=f"export: {{format: executorch}} ({REQUIREMENT})")


def _xnnpack_int8(program: torch.export.ExportedProgram, calibration: Iterable[Tensor]) -> torch.export.ExportedProgram:
    """PT2E int8 (per-channel symmetric weights, per-tensor activations) with XNNPACK's quantizer, calibrated on rows."""
    quantizer_mod = executorch("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
    pt2e = import_optional("torchao.quantization.pt2e.quantize_pt2e", extra="executorch", feature="ExecuTorch int8")
    quantizer = quantizer_mod.XNNPACKQuantizer()
    quantizer.set_global(quantizer_mod.get_symmetric_quantization_config(is_per_channel=True))
    prepared = pt2e.prepare_pt2e(program.module(), quantizer)
    for x in calibration:
        prepared(x)
    converted = pt2e.convert_pt2e(prepared)
    example = program.example_inputs[0]
    return torch.export.export(converted, example)


@torch.no_grad()
def export_pte(model: nn.Module, example: Batch, int8: bool = False, calibration: Iterable[Tensor] = ()) -> bytes:
    """Lower ``model`` (traced on one row of ``example``) to ``.pte`` bytes with the XNNPACK delegate.

    Raises:
        MissingExtraError: executorch is not installed.
        UnsupportedModuleError: torch.export or the lowering fails (the first line of the reason is kept).
    """
    if not isinstance(example, Tensor):
        raise UnsupportedModuleError("export: {format: executorch} takes models with one tensor input (vision/audio); "
                                     "text models: use format: onnx or gguf.")
    exir = executorch("executorch.exir")
    partitioner = executorch("executorch.backends.xnnpack.partition.xnnpack_partitioner").XnnpackPartitioner
    module = plain_copy(model).to("cpu").eval()
    row = (example[:1].to("cpu"),)
    try:
        program = torch.export.export(module, row)
        if int8:
            program = _xnnpack_int8(program, (x[i : i + 1].to("cpu") for x in calibration for i in range(len(x))))
        lowered = exir.to_edge_transform_and_lower(program, partitioner=[partitioner()])
        return bytes(lowered.to_executorch().buffer)
    except Exception as exc:
        reason = next(iter(str(exc).splitlines()), type(exc).__name__)
        raise UnsupportedModuleError(f"ExecuTorch could not lower {type(model).__name__}: {reason}. Keep format: onnx for it.") from exc


def counts_of(model: nn.Module, example: Batch) -> SourceCounts:
    """What the report card counts on the torch model a program is exported from (weights, nonzeros, MACs per example)."""
    one = example[:1] if isinstance(example, Tensor) else example
    return SourceCounts(count_params(model), count_nonzero(model), count_macs(model, one))


class PteModule(nn.Module):
    """A ``.pte`` program run by ExecuTorch's Python runtime; batches run row by row (the program is traced at batch 1)."""

    def __init__(self, pte: bytes, int8: bool = False, source_counts: SourceCounts | None = None) -> None:
        super().__init__()
        self.pte = pte
        self.int8 = int8
        self.source_counts = source_counts  # the program's weights are readable by ExecuTorch only: counted on its source
        self.slimtorch_format = "executorch"
        self.slimtorch_runtime = "executorch"
        self._method: Any = None

    @property
    def size_bytes(self) -> int:
        return len(self.pte)

    def _forward_method(self) -> Any:
        if self._method is None:
            runtime = executorch("executorch.runtime").Runtime.get()
            self._method = runtime.load_program(self.pte).load_method("forward")
        return self._method

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        method = self._forward_method()
        rows = [method.execute([x[i : i + 1].float().contiguous().cpu()])[0] for i in range(len(x))]
        return torch.cat(rows)


def _save(model: nn.Module, directory: Path) -> None:
    assert isinstance(model, PteModule)
    atomic_write_bytes(directory / PTE_FILE, model.pte)
    counts = None if model.source_counts is None else model.source_counts.to_json()
    atomic_write_bytes(directory / INFO_FILE, json.dumps({"int8": model.int8, "source_counts": counts}).encode())


def _load(directory: Path, spec: dict[str, Any]) -> nn.Module:
    path = directory / PTE_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {PTE_FILE}; re-run the export stage that wrote it.")
    info = read_json(directory / INFO_FILE, 1000, ArtifactError, "re-run the export stage") if (directory / INFO_FILE).is_file() else {}
    counts = info.get("source_counts")
    model = PteModule(path.read_bytes(), int8=bool(info.get("int8", False)),
                      source_counts=SourceCounts.from_json(counts) if isinstance(counts, dict) else None)
    set_attrs_(model, slimtorch_spec=spec.get("model"))
    try:
        model._forward_method()  # MissingExtraError without executorch; a corrupted file fails here, not at first call
    except ImportError:
        raise
    except Exception as exc:
        reason = next(iter(str(exc).splitlines()), type(exc).__name__)
        raise ArtifactError(f"{path} is not a program ExecuTorch can load ({reason}); re-run the export stage.") from exc
    return model


if not FORMATS.registered("executorch"):
    FORMATS.register("executorch")(ArtifactFormat(_save, _load))

"""The model card (``README.md``) every saved Hugging Face directory carries: what was done, the measured figures.

A directory saved by slimtorch is meant to be loaded by people who never installed slimtorch; the card tells them
how (``AutoModel*.from_pretrained``, or the loader a quantized format needs), what the architecture now is (the
config's widths and depth), what slimtorch did to it and the figures the run measured. It only states what it is
given or can read off the model: no figure is invented when none was measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from slimtorch.io import atomic_write_text
from slimtorch.models.hf import HFModel

CARD_FILE = "README.md"

# Which transformers class loads each HFModel kind.
AUTO_CLASS = {"encoder": "AutoModel", "classifier": "AutoModelForSequenceClassification", "causal_lm": "AutoModelForCausalLM"}

# Config fields worth showing: the widths and depth structured pruning changes.
_SHAPE_FIELDS = ("model_type", "hidden_size", "n_embd", "num_hidden_layers", "n_layer", "num_attention_heads", "n_head",
                 "num_key_value_heads", "head_dim", "intermediate_size", "n_inner", "vocab_size")


def card_text(hf: nn.Module, kind: str, *, loader: str | None = None, heads_per_layer: int | None = None,
              facts: Mapping[str, Any] | None = None) -> str:
    """The card's Markdown for the transformers model ``hf`` of HFModel ``kind``.

    Args:
        loader: how to load the directory when plain ``from_pretrained`` is not the whole story (a quantized format).
        heads_per_layer: the attention heads the model really uses, when the saved config cannot say it (BERT/GPT-2
            head pruning: removed heads are stored as zeros, so plain transformers computes the same outputs).
        facts: what was done and what was measured, e.g. ``{"stages": [...], "figures": {"perplexity": 21.3}}``.
    """
    facts = dict(facts or {})
    config = getattr(hf, "config", None)
    auto = AUTO_CLASS.get(kind, "AutoModel")
    params = sum(p.numel() for p in {id(p): p for p in hf.parameters()}.values())
    lines = ["---", "library_name: transformers", "tags: [slimtorch, compressed]", "---", "",
             f"# {facts.pop('title', 'A model compressed with slimtorch')}", "",
             "## Load it", "", "```python", "import transformers", "",
             f"model = transformers.{auto}.from_pretrained(\"path/to/this/hf\")", "```", ""]
    if loader:
        lines += [f"**Loader:** {loader}", ""]
    else:
        lines += ["Plain `transformers` loads it: no slimtorch, no pickle, no remote code (weights in `model.safetensors`).", ""]
    lines += ["## Architecture", "", f"- parameters: {params:,}"]
    for field in _SHAPE_FIELDS:
        value = getattr(config, field, None)
        if value is not None:
            lines.append(f"- {field}: {value}")
    if heads_per_layer is not None:
        lines.append(f"- attention heads really used per layer: {heads_per_layer} (the removed heads are stored as zero "
                     "weights so that the config's head size stays right; they contribute nothing to the outputs)")
    lines.append("")
    stages = facts.pop("stages", None)
    if stages:
        lines += ["## What was done", ""] + [f"- {s}" for s in stages] + [""]
    figures = facts.pop("figures", None) or {}
    figures = {**figures, **facts}
    if figures:
        lines += ["## Measured", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in figures.items()] + [""]
    else:
        lines += ["## Measured", "", ("No figures were given when this directory was saved; the run's report card "
                                      "(`report.md` beside it) has them."), ""]
    lines += ["Written by slimtorch.", ""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_card(directory: Path, hf: nn.Module, kind: str, **kwargs: Any) -> Path:
    """Write :func:`card_text` to ``directory/README.md`` atomically; returns the path."""
    path = Path(directory) / CARD_FILE
    atomic_write_text(path, card_text(hf, kind, **kwargs))
    return path


# How to load a directory whose weights plain transformers cannot read as a transformers checkpoint.
LOADERS = {
    "torch_quantized": ("slimtorch: `slimtorch.load(\"path/to/this/directory\")` (torch int8/int4 weight-only layers, stored "
                        "as safetensors; plain transformers cannot rebuild them). For a file other runtimes read, export GGUF "
                        "(`export: {format: gguf}`): llama.cpp runs it and transformers reads it with `gguf_file=`."),
    "gguf": ("llama.cpp (and Ollama, LM Studio) run `model.gguf` directly; transformers reads it too, dequantized to "
             "float: `AutoModelForCausalLM.from_pretrained(\"path/to/this/directory\", gguf_file=\"model.gguf\")` after "
             "copying the tokenizer files beside it, or `slimtorch.load(\"path/to/this/directory\")`."),
    "onnx": "onnxruntime: `onnxruntime.InferenceSession(\"path/to/this/directory/model.onnx\")`, or `slimtorch.load(...)`.",
    "openvino": "OpenVINO: `openvino.Core().read_model(...)` on the IR files here, or `slimtorch.load(...)`.",
}


def write_hf_card(directory: Path, fmt: str, model: Any, facts: Mapping[str, Any] | None) -> Path:
    """The card of a saved HFModel ``model`` in artifact format ``fmt``: beside its weights (``hf/``) when plain
    transformers loads them, else at the directory's top with the loader the format needs."""
    import json

    if fmt in ("hf", "hf_pruned"):
        heads = None
        shapes = Path(directory) / "pruned_shapes.json"
        if fmt == "hf_pruned" and shapes.is_file():
            heads = json.loads(shapes.read_text()).get("heads_per_layer")
        return write_card(Path(directory) / "hf", model.hf, model.kind, heads_per_layer=heads, facts=facts)
    loader = LOADERS.get(fmt, f"slimtorch: `slimtorch.load(\"path/to/this/directory\")` (artifact format {fmt!r}).")
    return write_card(Path(directory), model.hf, model.kind, loader=loader, facts=facts)


def measured_figures(measurement: Any) -> dict[str, Any]:
    """The scalar figures of a report-card measurement (``slimtorch.measure.Measurement``) worth a card row."""
    figures: dict[str, Any] = {"params": measurement.params, "nonzero_params": measurement.nonzero_params}
    if measurement.size_bytes is not None:
        figures["size_MB (slimtorch directory)"] = round(measurement.size_bytes / 1e6, 3)
    figures.update({k: v for k, v in (measurement.metrics or {}).items() if isinstance(v, (int, float))})
    if measurement.agreement is not None:
        figures["agreement_with_original"] = measurement.agreement
    llm = getattr(measurement, "llm", None)  # a causal LM's LLMFacts: its scalar figures are those a report kept unnamed
    figures.update({k: v for k, v in (llm.extra if llm is not None else {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for batch, stats in (measurement.latency_ms or {}).items():
        figures[f"latency_p50_ms (batch {batch}, {measurement.runtime}, {measurement.threads} threads)"] = stats.p50
    return figures


def refresh_card(directory: Path, model: Any, stage: str, measurement: Any) -> None:
    """Rewrite the card of a saved HF model with the figures its run just measured (no-op for other models)."""

    hf_model = next((c for c in (model, getattr(model, "model", None)) if isinstance(c, HFModel)), None)
    if hf_model is None:
        return
    fmt = getattr(model, "slimtorch_format", None) or "hf"  # artifact.format_of, without importing artifact
    write_hf_card(Path(directory), fmt, hf_model, {"stages": [f"{stage} (slimtorch stage; the run's report.md has the recipe)"],
                                                   "figures": measured_figures(measurement)})

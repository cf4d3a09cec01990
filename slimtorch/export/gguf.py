"""GGUF export (llama.cpp's file format) of a LLaMA-architecture causal LM, checked by reading it back.

The model's effective weights (float, or dequantized from slimtorch's int8/int4 layers, pruning
masks baked in) are written with the ``gguf`` package's ``GGUFWriter`` under llama.cpp's tensor
names (``token_embd``, ``blk.N.attn_q`` ..., ``output``), the query/key rows permuted the way
llama.cpp's ``convert_hf_to_gguf.py`` does, and the config as ``llama.*`` metadata (a structurally
pruned model writes its own layer count, head counts and ``key_length``). Weight matrices are stored
as ``f32``, ``f16``, ``q8_0``, ``q4_0`` or ``q4_1`` (blocks of 32 along the input axis; a matrix whose
rows are not a multiple of 32 falls back to ``f16``); norms stay ``f32``. With ``q4_1`` a slimtorch
int4 layer (GPTQ, AWQ or round-to-nearest codes, groups a multiple of 32) is written *code for code*:
its asymmetric ``q · scale + minimum`` grid is exactly Q4_1's ``q · d + m`` (scale and minimum
rounded from bf16 to fp16), so the calibrated codes reach llama.cpp unchanged.

The tokenizer is copied verbatim (every ``tokenizer.*`` key) from the GGUF file the model was loaded
from (``gguf:<file>``, ``hf:smollm2``), so llama.cpp tokenizes exactly as before.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from slimtorch.artifact import FORMATS, ArtifactFormat
from slimtorch.errors import ArtifactError, DataError, MissingExtraError, UnsupportedModuleError
from slimtorch.export.config import GGUFQuant
from slimtorch.measure.llm import PROMPTS, causal_lm_of, eval_token_ids
from slimtorch.models.attrs import set_attrs_
from slimtorch.models.gguf import INSTALL_HINT, PACKAGED_GGUF, check_gguf_file, packaged_gguf
from slimtorch.models.hf import HFModel
from slimtorch.quantize._torch import WeightOnlyEmbedding, WeightOnlyLinear
from slimtorch.quantize.ggml_blocks import BlockGrid, block_grid, quantize_blocks
from slimtorch.quantize.gguf_plan import SizePlan, allocate, candidates, mix_plan
from slimtorch.quantize.gptq import calibration_inputs, input_hessians

if TYPE_CHECKING:
    from slimtorch.data.bundle import DataBundle

log = logging.getLogger(__name__)

# Written by the gguf package's own rounding (llama.cpp's reference quantizer), unless calibrated; the others by
# slimtorch.quantize.ggml_blocks on the type's stored grid, with the per-tensor choice of slimtorch.quantize.gguf_plan.
LEGACY_QUANTS = ("f32", "f16", "q8_0", "q4_0", "q4_1")
# The token-embedding table and the output layer (one tensor when tied): 4-bit rounding of the table costs most of a small
# LM's quality (SmolLM2-135M in llama.cpp: q4_0 everywhere 1.265x perplexity; llama-quantize's Q4_0, whose table is 8-bit,
# 1.136x), so a 4-bit file keeps them at q8_0 unless told otherwise, as llama.cpp's own quantizer does.
TABLES = ("token_embd", "output")


def table_quant_for(quant: GGUFQuant, table: GGUFQuant | None) -> GGUFQuant:
    """How the embedding/output table is stored: ``table`` if given, q8_0 for a 4-bit file, else the file's ``quant``."""
    if table is not None:
        return table
    return "q8_0" if quant in ("q4_0", "q4_1") else quant
BLOCK = 32  # weights per block of q8_0 / q4_0 / q4_1
# llama.cpp's LlamaFileType of a file whose matrices are mostly of this type.
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q4_k": 14, "q4_k_m": 15, "q5_k": 16,
              "q5_k_m": 17, "q6_k": 18}
GGML_QUANT_VERSION = 2
# HF LLaMA module -> llama.cpp tensor name (per layer: "blk.{i}." + name).
LAYER_TENSORS = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


@dataclass
class GGUFFile:
    """What was written: the file, its tensors' storage types and the matrices that took another path."""

    path: Path
    quant: str
    tensor_types: dict[str, str] = field(default_factory=dict)
    exact_int4: list[str] = field(default_factory=list)  # int4 codes copied as Q4_1 blocks
    gptq: list[str] = field(default_factory=list)  # codes chosen by GPTQ on the stored block grid
    fallback: list[str] = field(default_factory=list)  # matrices whose rows are no multiple of 32: f16
    is_tied: bool = False  # no output.weight: llama.cpp (and transformers) reuse token_embd

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def _gguf() -> Any:
    if importlib.util.find_spec("gguf") is None:
        raise MissingExtraError(f"GGUF export needs the gguf package: {INSTALL_HINT}.")
    import gguf

    return gguf


def check_llama(lm: HFModel) -> None:
    """Raise unless ``lm`` is a LLaMA-architecture model this writer describes faithfully."""
    config = lm.hf.config
    if config.model_type != "llama":
        raise UnsupportedModuleError(f"GGUF export writes LLaMA-architecture causal LMs (model_type 'llama'); this model is "
                                     f"{config.model_type!r}. Export it with format: onnx instead.")
    unsupported = [name for name, bad in [("attention_bias", getattr(config, "attention_bias", False)),
                                          ("mlp_bias", getattr(config, "mlp_bias", False)),
                                          ("hidden_act", config.hidden_act != "silu"),
                                          ("rope scaling", _rope(config).get("rope_type", "default") != "default")] if bad]
    if unsupported:
        raise UnsupportedModuleError(f"GGUF export covers plain LLaMA (no biases, SiLU, default RoPE); this config has "
                                     f"{', '.join(unsupported)}. Export it with format: onnx instead.")


def _rope(config: Any) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return dict(params) | ({"rope_theta": config.rope_theta} if getattr(config, "rope_theta", None) else {})


def head_dim_of(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def permute_rows(weight: Tensor, heads: int) -> Tensor:
    """llama.cpp's RoPE row order for a query/key weight (heads·hd, K): each head's two halves interleaved."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _modules(lm: HFModel) -> Iterator[tuple[str, nn.Module, int | None]]:
    """``(gguf name, module, heads to permute by or None)`` of every tensor llama.cpp reads, in file order."""
    hf, config = lm.hf, lm.hf.config
    yield "token_embd", hf.model.embed_tokens, None
    for i, layer in enumerate(hf.model.layers):
        for fqn, name in LAYER_TENSORS.items():
            heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(name)
            yield f"blk.{i}.{name}", layer.get_submodule(fqn), heads
    yield "output_norm", hf.model.norm, None
    yield "output", hf.lm_head, None


def file_order(name: str) -> tuple[int, str]:
    """Where a tensor goes in the file: llama-quantize's order (the tensors outside the layers, then layer by layer, each
    by name). Decoding slimtorch's Q4_K_M file in it measured 3-5 % faster than in convert_hf_to_gguf's (docs/LLM.md)."""
    layer = re.match(r"blk\.(\d+)\.", name)
    return (-1 if layer is None else int(layer.group(1)), name)


def effective_weight(module: nn.Module) -> Tensor:
    """The float weight a module computes with: dequantized from slimtorch's int8/int4 layers."""
    if isinstance(module, WeightOnlyEmbedding):
        return module.table.dequantized_weight()
    getter = getattr(module, "dequantized_weight", None)
    if callable(getter):
        return getter().float()
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        raise UnsupportedModuleError(f"GGUF export cannot read the weight of a {type(module).__name__}; quantize after export, "
                                     "or export the float model.")
    return weight.detach().float()


def q4_1_blocks(layer: WeightOnlyLinear) -> np.ndarray:
    """An int4 layer's codes as Q4_1 blocks ``(N, K/32 · 20)`` bytes: fp16 d, fp16 m, 16 bytes of nibbles."""
    n, k = layer.out_features, layer.in_features
    codes = layer.codes().reshape(n, k // BLOCK, BLOCK)  # (N, K/32, 32) in [0, 15]
    per_block = layer.group_size // BLOCK
    d = layer.scale.float().repeat_interleave(per_block, 1).to(torch.float16)  # (N, K/32)
    m = layer.minimum.float().repeat_interleave(per_block, 1).to(torch.float16)
    nibbles = (codes[..., :16] | (codes[..., 16:] << 4)).to(torch.uint8)  # ggml: low nibbles hold the block's first half
    blocks = torch.cat([d[..., None].view(torch.uint8), m[..., None].view(torch.uint8), nibbles], -1)  # (N, K/32, 20)
    return blocks.reshape(n, -1).numpy()


def _int4_layer(module: nn.Module, quant: str) -> WeightOnlyLinear | None:
    """The int4 layer whose codes go to the file as they are (``q4_1`` and groups a multiple of 32), else None."""
    layer = module.table if isinstance(module, WeightOnlyEmbedding) else module
    if quant == "q4_1" and isinstance(layer, WeightOnlyLinear) and layer.bits == 4 and layer.group_size % BLOCK == 0:
        return layer
    return None


def _tensor(gguf: Any, module: nn.Module, quant: str, heads: int | None, hessian: Tensor | None = None,
            use_gptq: bool = False, block_rounding: bool = False, grid: BlockGrid | None = None) -> tuple[np.ndarray, Any, str]:
    """The array to write for ``module``, its GGML type, and how it was made (``exact_int4``, ``fallback``, ``gptq`` or ``""``).

    ``hessian`` (K, K) of the module's inputs picks each group's range by importance (and GPTQ's codes with
    ``use_gptq``) for the block types; without it the legacy types use the gguf package's own rounding. A ``grid``
    (the one a recovery trained on, in the model's row order) is used as it is, codes rounded to nearest on it.
    """
    types = gguf.GGMLQuantizationType
    layer = _int4_layer(module, quant)
    if layer is not None:
        blocks = torch.from_numpy(q4_1_blocks(layer))  # (N, K/32 · 20): codes move with their rows
        return (permute_rows(blocks, heads) if heads else blocks).numpy(), types.Q4_1, "exact_int4"
    weight = effective_weight(module)
    weight = permute_rows(weight, heads) if heads else weight  # rows move; H is over columns, so it stays
    array = weight.numpy()
    if array.ndim == 1 or quant == "f32":
        return array.astype(np.float32), types.F32, ""
    if quant == "f16" or array.shape[-1] % BLOCK:
        return array.astype(np.float16), types.F16, "" if quant == "f16" else "fallback"
    qtype = getattr(types, quant.upper())
    if grid is not None:
        data, _ = quantize_blocks(weight, quant, grid=grid.map_rows(lambda t: permute_rows(t, heads)) if heads else grid)
        return data, qtype, ""
    if quant in LEGACY_QUANTS and hessian is None and not block_rounding:
        return gguf.quants.quantize(array, qtype), qtype, ""
    data, _ = quantize_blocks(weight, quant, hessian, use_gptq=use_gptq and hessian is not None)
    return data, qtype, "gptq" if use_gptq and hessian is not None else ""


def source_gguf(model: nn.Module) -> Path | None:
    """The GGUF file the model was first loaded from (``gguf:<file>`` or a packaged alias), if any."""
    ref = (getattr(model, "slimtorch_spec", None) or {}).get("ref", "")
    if ref.startswith("gguf:"):
        return check_gguf_file(ref[len("gguf:"):])
    if ref.startswith("hf:") and ref[3:] in PACKAGED_GGUF:
        return packaged_gguf(ref[3:])
    return None


def copy_tokenizer_(writer: Any, source: Path, vocab_size: int) -> None:
    """Every ``tokenizer.*`` key of ``source`` into ``writer``, verbatim."""
    gguf = _gguf()
    fields = gguf.GGUFReader(str(source)).fields
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_size:
        found = "no tokenizer" if tokens is None else f"{len(tokens.data)} tokens"
        raise UnsupportedModuleError(f"the model's source GGUF file {source} has {found}, but the model has {vocab_size} "
                                     "embeddings; GGUF export copies the source file's tokenizer and needs them to match.")
    for name, f in fields.items():
        if name.startswith("tokenizer."):
            sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, f.contents(), f.types[0], sub_type=sub)


def write_gguf(model: HFModel, path: Path, quant: GGUFQuant, source: Path | None, table: GGUFQuant | None = None,
               plan: dict[str, str] | None = None, hessians: dict[str, Tensor] | None = None, use_gptq: bool = False,
               block_rounding: bool = False, grids: dict[str, BlockGrid] | None = None, file_type: str | None = None) -> GGUFFile:
    """Write ``model`` (a LLaMA causal LM) to ``path`` with matrices stored as ``quant``.

    Args:
        source: the GGUF file the model was loaded from (:func:`source_gguf`): its tokenizer is copied.
        table: how the embedding/output table is stored (:func:`table_quant_for`); slimtorch int4 table codes written to a
            q4_1 file stay code for code whatever this says.
        plan: the GGML type of each matrix by gguf tensor name (:func:`tensor_plan`); overrides ``quant``/``table``.
        hessians: ``H`` of each matrix's inputs by gguf tensor name (:func:`gguf_hessians`): ranges by importance, and
            GPTQ codes with ``use_gptq``.
        block_rounding: round the legacy types (q8_0, q4_0, q4_1) on slimtorch's block grid too, not the gguf package's
            own rounding: the grid a recovery trained with (:mod:`slimtorch.export.gguf_recovery`).
        grids: a fixed grid per gguf tensor name (a recovery's, in the model's row order): those matrices are rounded to
            nearest on it, neither re-chosen nor solved by GPTQ.
        file_type: the type llama.cpp's file-type label names (``general.file_type``, "mostly ..."); default ``quant``.
            A size target's plan passes its :func:`dominant_type`.

    Raises:
        UnsupportedModuleError: not LLaMA, or no source GGUF file to take the tokenizer from.
        MissingExtraError: the ``gguf`` package is missing.
    """
    gguf = _gguf()
    check_llama(model)
    if source is None:
        raise UnsupportedModuleError("GGUF export copies the tokenizer of the GGUF file the model was loaded from; this model "
                                     "was not loaded from one (load it as gguf:<file> or hf:smollm2).")
    config = model.hf.config
    table_quant = table_quant_for(quant, table)
    out = GGUFFile(path=Path(path), quant=quant)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(re.sub(r"\s+", " ", str(getattr(config, "_name_or_path", "") or "slimtorch export")).strip())
    head_dim = head_dim_of(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(len(model.hf.model.layers))
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * config.num_attention_heads != config.hidden_size:  # heads pruned: llama.cpp's default would be wrong
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(_rope(config).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(FILE_TYPES.get(file_type or quant, FILE_TYPES[quant]))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    copy_tokenizer_(writer, source, config.vocab_size)
    embedding = effective_weight(model.hf.model.embed_tokens)
    out.is_tied = torch.equal(effective_weight(model.hf.lm_head), embedding)
    with torch.no_grad():
        for name, module, heads in sorted(_modules(model), key=lambda entry: file_order(entry[0])):
            if name == "output" and out.is_tied:
                continue
            exact_table = name in TABLES and _int4_layer(module, quant) is not None
            kind: str = table_quant if name in TABLES and not exact_table else quant
            if plan is not None and name in plan:
                kind = plan[name]
            hessian = (hessians or {}).get(name)
            array, qtype, how = _tensor(gguf, module, kind, heads, hessian, use_gptq, block_rounding, (grids or {}).get(name))
            if how:
                getattr(out, how).append(name)
            writer.add_tensor(f"{name}.weight", array, raw_dtype=qtype)
            out.tensor_types[f"{name}.weight"] = qtype.name.lower()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


# --- per-tensor types: llama.cpp's mixes, or a size target ------------------------------------------


def matrix_shapes(lm: HFModel) -> dict[str, tuple[int, int]]:
    """``(rows, columns)`` of every weight matrix the file stores, by gguf tensor name (no ``output`` when tied)."""
    embedding = effective_weight(lm.hf.model.embed_tokens)
    tied = torch.equal(effective_weight(lm.hf.lm_head), embedding)
    shapes = {}
    for name, module, _ in _modules(lm):
        if name in ("output_norm",) or name.endswith(("_norm",)) or (name == "output" and tied):
            continue
        weight = effective_weight(module)
        if weight.ndim == 2:
            shapes[name] = (int(weight.shape[0]), int(weight.shape[1]))
    return shapes


def gguf_hessians(lm: HFModel, batches: list[Any]) -> dict[str, Tensor]:
    """``H = 2XXᵀ/n`` of each float matrix's inputs by gguf tensor name (a tied table: the ``lm_head``'s inputs)."""

    fqn_of = {id(module): fqn for fqn, module in lm.named_modules()}
    names: dict[str, str] = {}
    for name, module, _ in _modules(lm):
        if isinstance(module, nn.Linear):
            names[name] = fqn_of[id(module)]
    if "output" in names and isinstance(lm.hf.lm_head, nn.Linear):
        names.setdefault("token_embd", names["output"])
    hessians = input_hessians(lm, sorted(set(names.values())), batches)
    out = {name: hessians[fqn] for name, fqn in names.items()}
    if torch.equal(effective_weight(lm.hf.lm_head), effective_weight(lm.hf.model.embed_tokens)):
        out["token_embd"] = out.pop("output")  # one tensor: the table is written once, as token_embd
    return out


def output_error(weight: Tensor, qtype: str, hessian: Tensor | None) -> float:
    """``tr(ΔW H ΔWᵀ)`` of rounding ``weight`` to ``qtype`` on its importance-chosen grid (``H = I`` without one)."""
    grid = block_grid(weight, qtype, None if hessian is None else torch.diag(hessian), steps=5)  # coarse range search: a ranking
    delta = grid.dequantize(grid.codes(weight)) - weight  # (N, K)
    if hessian is None:
        return float((delta**2).sum())
    return float(((delta @ hessian) * delta).sum())


def dominant_type(plan: dict[str, str], shapes: dict[str, tuple[int, int]]) -> str:
    """The type that stores the most weights of the layers' matrices (the table's own type decides only without them):
    what llama.cpp's "mostly ..." file-type label of a planned mix should name."""
    weights: dict[str, int] = {}
    stored = [name for name in plan if name in shapes]  # a tied ``output`` is not stored
    for name in [n for n in stored if n not in TABLES] or stored:
        rows, cols = shapes[name]
        weights[plan[name]] = weights.get(plan[name], 0) + rows * cols
    return max(sorted(weights), key=weights.__getitem__)


def tensor_plan(lm: HFModel, quant: GGUFQuant, table: GGUFQuant | None, hessians: dict[str, Tensor] | None,
                budget_bytes: int | None) -> tuple[dict[str, str], SizePlan | None]:
    """The type of every matrix: llama.cpp's mix for ``quant``, or, with ``budget_bytes`` for all matrices, the
    least-error allocation by measured sensitivity (:func:`slimtorch.quantize.gguf_plan.allocate`)."""
    shapes = matrix_shapes(lm)
    columns = {name: cols for name, (_, cols) in shapes.items()}
    if budget_bytes is None and quant in LEGACY_QUANTS:
        table = table_quant_for(quant, table)  # the table the unplanned writer gives a legacy file (q8_0 in a 4-bit one)
    plan = mix_plan(quant, columns, len(lm.hf.model.layers), table)
    if budget_bytes is None:
        return plan, None
    modules = {name: module for name, module, _ in _modules(lm)}
    errors: dict[str, dict[str, float]] = {}
    fixed = {}
    for name, (_, cols) in shapes.items():
        hessian = (hessians or {}).get(name)
        if hessian is None or (table is not None and name in TABLES):  # no inputs measured (an untied input table)
            fixed[name] = plan[name]
            continue
        weight = effective_weight(modules[name])
        errors[name] = {qtype: output_error(weight, qtype, hessian) for qtype in candidates(cols)}
    size = allocate(errors, shapes, budget_bytes, fixed)
    return size.types, size


# --- reading the file back ------------------------------------------------------------------------

GGUF_FILE = "model.gguf"
TOKENIZER_DIR = "tokenizer"


def read_back(path: Path, tokenizer: Any) -> HFModel:
    """The file as transformers' GGUF reader loads it (weights dequantized to float32), with ``tokenizer``.

    The tokenizer is the exported model's own: the file carries the same ``tokenizer.*`` keys it was
    built from, and rebuilding it from them is the slow part of a GGUF load.
    """
    from transformers import AutoModelForCausalLM

    try:
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ArtifactError(f"transformers cannot read the GGUF file {path}: {str(exc).splitlines()[0]}") from exc
    return HFModel(hf.eval(), tokenizer, "causal_lm")


def check_ids(lm: HFModel, data: DataBundle, tokens: int) -> Tensor:
    """``(T,)`` token ids to compare on: the test split's text, or the sample prompts when the data is not text."""
    try:
        return eval_token_ids(lm, data, "test", tokens)[:tokens]
    except (DataError, AttributeError, TypeError):
        return lm.tokenizer("\n".join(PROMPTS), return_tensors="pt")["input_ids"][0][:tokens]


@torch.no_grad()
def logit_parity(model: HFModel, back: HFModel, ids: Tensor) -> dict[str, float]:
    """Max |Δ logit|, top-1 agreement and mean KL(model ‖ file) in nats over the positions of ``ids``."""
    ref = model.hf(input_ids=ids[None]).logits[0].float()  # (T, V)
    got = back.hf(input_ids=ids[None]).logits[0].float()
    logp, logq = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    return {"tokens": len(ids), "max_abs_diff": round((got - ref).abs().max().item(), 6),
            "top1_agreement": round((got.argmax(-1) == ref.argmax(-1)).float().mean().item(), 4),
            "kl_nats": round((logp.exp() * (logp - logq)).sum(-1).mean().item(), 6)}


def architecture_of(config: Any) -> dict[str, int]:
    return {"block_count": int(config.num_hidden_layers), "head_count": int(config.num_attention_heads),
            "head_count_kv": int(config.num_key_value_heads), "head_dim": head_dim_of(config),
            "feed_forward_length": int(config.intermediate_size), "embedding_length": int(config.hidden_size),
            "vocab_size": int(config.vocab_size)}


@dataclass(frozen=True)
class GGUFCalibration:
    """How the block types are solved: ``method`` (rtn or gptq on the stored grid) on calibration text, and a size target
    (``bits_per_weight`` over the weight matrices, or ``size_mb`` for the whole file) that allocates a type per matrix."""

    method: Literal["rtn", "gptq"] = "rtn"
    examples: int = 128
    split: str = "train"
    bits_per_weight: float | None = None
    size_mb: float | None = None

    @property
    def needs_inputs(self) -> bool:
        return self.method == "gptq" or self.bits_per_weight is not None or self.size_mb is not None


def budget_bytes(lm: HFModel, calibration: GGUFCalibration, source: Path | None) -> int | None:
    """Bytes allowed for the weight matrices by the size target, or None without one."""
    shapes = matrix_shapes(lm)
    if calibration.bits_per_weight is not None:
        return int(calibration.bits_per_weight * sum(r * c for r, c in shapes.values()) / 8)
    if calibration.size_mb is None:
        return None
    # The rest of the file: f32 norms, and the metadata (the tokenizer, copied from the source file, dominates it).
    norms = sum(4 * int(effective_weight(m).numel()) for name, m, _ in _modules(lm) if name.endswith("_norm"))
    metadata = int(_gguf().GGUFReader(str(source)).data_offset) if source is not None else 0
    return int(calibration.size_mb * 1e6) - norms - metadata - 4096


def export_gguf(model: nn.Module, data: DataBundle, directory: Path, quant: GGUFQuant, check_tokens: int,
                table: GGUFQuant | None = None, calibration: GGUFCalibration | None = None,
                recover: Recovery | None = None) -> tuple[HFModel, dict[str, Any]]:
    """Write ``model`` to ``directory/model.gguf``, read it back through transformers and compare logits.

    Args:
        calibration: solve the block types on calibration text (GPTQ codes, importance-chosen ranges) and/or meet a size
            target; default: llama.cpp's mix for ``quant`` with round-to-nearest.
        recover: token-distil the model first with its matrices in the blocks the plan gives them
            (:mod:`slimtorch.export.gguf_recovery`), from the codes of ``calibration.method``; the file then holds the
            trained weights rounded the same way.

    Returns:
        The model as the file holds it (an fp32 :class:`HFModel` tagged ``slimtorch_format="gguf"``,
        saved as the GGUF file) and the facts for the stage record.
    """
    lm = causal_lm_of(model)
    if lm is None:
        raise UnsupportedModuleError(f"GGUF export writes causal language models with a tokenizer; got a {type(model).__name__}. "
                                     "Use format: onnx for other models.")
    spec = getattr(model, "slimtorch_spec", None)
    calibration = calibration or GGUFCalibration()
    source = source_gguf(model)
    hessians, plan, size = None, None, None
    if calibration.needs_inputs:
        hessians = gguf_hessians(lm, calibration_inputs(lm, data, calibration.split, calibration.examples))
    if quant not in LEGACY_QUANTS or calibration.needs_inputs or recover is not None:
        plan, size = tensor_plan(lm, quant, table, hessians, budget_bytes(lm, calibration, source))
    recovery, grids = None, None
    if recover is not None:
        assert plan is not None  # planned above
        recovery, grids = recover(lm, _trainable_matrices(lm, plan), hessians, calibration.method)
    label = dominant_type(plan, matrix_shapes(lm)) if plan is not None and size is not None else None
    written = write_gguf(lm, directory / GGUF_FILE, quant, source, table, plan, hessians, calibration.method == "gptq",
                         block_rounding=recover is not None, grids=grids, file_type=label)
    back = read_back(written.path, lm.tokenizer)
    expected, got = architecture_of(lm.hf.config), architecture_of(back.hf.config)
    if expected != got:
        raise ArtifactError(f"the GGUF file reads back as {got}, but the model is {expected}; the exported metadata is wrong.")
    parity = logit_parity(lm, back, check_ids(lm, data, check_tokens))
    types: dict[str, int] = {}
    for kind in written.tensor_types.values():
        types[kind] = types.get(kind, 0) + 1
    details = {"format": "gguf", "quant": quant, "table_quant": written.tensor_types.get("token_embd.weight"),
               "gguf_bytes": written.size_bytes, "tensor_types": types,
               "exact_int4_tensors": len(written.exact_int4), "f16_fallback_tensors": written.fallback,
               "tied_output": written.is_tied, "architecture": got, "parity": parity,
               "calibration": calibration.method, "gptq_tensors": len(written.gptq),
               "bits_per_weight": round(matrix_bits_per_weight(written.path), 4),
               "size_plan": size.summary() if size is not None else None, "recovery": recovery,
               "backend": f"gguf {importlib.metadata.version('gguf')} GGUFWriter; read back by transformers "
                          f"{importlib.metadata.version('transformers')}"}
    out = set_attrs_(back, slimtorch_format="gguf", gguf_bytes=written.path.read_bytes(), slimtorch_spec=spec)
    return out, details


# Trains the model in place with {gguf name: (Linear, block type)} in their blocks, starting from the export's method's codes
# (rtn or gptq); returns the facts for the record and the grids the writer must keep (None: it chooses them again).
Recovery = Callable[[HFModel, dict[str, tuple[nn.Module, str]], "dict[str, Tensor] | None", str],
                    "tuple[dict[str, Any], dict[str, BlockGrid] | None]"]


def _trainable_matrices(lm: HFModel, plan: dict[str, str]) -> dict[str, tuple[nn.Module, str]]:
    """The matrices a recovery trains in their blocks: every float ``Linear``/``Embedding`` the plan gives a block type.

    A tied output layer computes with the table's rounding (the file stores one tensor); int8/int4 layers have no
    float weight to train, and rows not a multiple of 32 are stored f16.
    """
    out: dict[str, tuple[nn.Module, str]] = {}
    for name, module, _ in _modules(lm):
        kind = plan.get(name) or (plan.get("token_embd") if name == "output" else None)
        weight = getattr(module, "weight", None)
        if type(module) in (nn.Linear, nn.Embedding) and kind not in (None, "f16", "f32") and isinstance(weight, Tensor) \
                and weight.shape[-1] % BLOCK == 0:
            out[name] = (module, kind)
    return out


def matrix_bits_per_weight(path: Path) -> float:
    """Bits per weight of the file's weight matrices (every tensor of two dimensions), as stored."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    matrices = [t for t in reader.tensors if len(t.shape) == 2]
    return sum(int(t.n_bytes) for t in matrices) * 8 / max(sum(int(t.n_elements) for t in matrices), 1)


def _save_gguf(model: nn.Module, directory: Path) -> None:
    (directory / GGUF_FILE).write_bytes(getattr(model, "gguf_bytes"))  # noqa: B009  (a plain attribute torch does not type)
    getattr(model, "tokenizer").save_pretrained(directory / TOKENIZER_DIR)  # noqa: B009


def _load_gguf(directory: Path, spec: dict[str, Any]) -> nn.Module:
    from transformers import AutoTokenizer

    path = check_gguf_file(directory / GGUF_FILE)
    model = read_back(path, AutoTokenizer.from_pretrained(str(directory / TOKENIZER_DIR)))
    return set_attrs_(model, slimtorch_format="gguf", gguf_bytes=path.read_bytes())


if not FORMATS.registered("gguf"):
    FORMATS.register("gguf")(ArtifactFormat(_save_gguf, _load_gguf, shipped=GGUF_FILE))

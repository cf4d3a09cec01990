"""Hugging Face transformer surgery: attention heads, FFN neurons and whole layers, config kept in sync.

Supported families: BERT-like encoders (``bert``, ``roberta``...: ``encoder.layer``), GPT-2 (``h``) and
LLaMA-like decoders (``layers`` with ``q/k/v/o_proj`` and ``gate/up/down_proj``). Every layer keeps
the same number of heads / FFN neurons (chosen per layer by importance), because HF configs hold one
number for all layers. FFN and layer pruning and LLaMA heads round-trip through plain
``save_pretrained``/``from_pretrained``; BERT/GPT-2 configs derive the head size from
``hidden_size / num_heads``, so pruned heads are saved in the ``hf_pruned`` artifact format (removed heads
as zeros, so plain transformers still loads it; slimtorch removes them again on load).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from slimtorch.core import Batch, RunContext, forward
from slimtorch.distill.losses import masked_token_mean
from slimtorch.errors import UnsupportedModuleError
from slimtorch.models.attrs import set_attrs_
from slimtorch.prune.config import PruneConfig
from slimtorch.prune.details import FfnPruned, HeadsPruned, LayersDropped, PruneResult, TransformerDetails
from slimtorch.prune.importance import build_importance, calibration_loss

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


# -- low-level surgery on Linear / transformers Conv1D ----------------------------------------------

def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D"


@torch.no_grad()
def keep_outputs_(m: nn.Module, idx: Tensor) -> None:
    """Keep only output features ``idx`` of a Linear/Conv1D."""
    weight, bias = cast(Tensor, m.weight), cast("Tensor | None", m.bias)
    if _is_conv1d(m):
        m.weight = nn.Parameter(weight[:, idx].clone())
        set_attrs_(m, nf=len(idx))
    else:
        m.weight = nn.Parameter(weight[idx].clone())
        set_attrs_(m, out_features=len(idx))
    if bias is not None:
        m.bias = nn.Parameter(bias[idx].clone())


@torch.no_grad()
def keep_inputs_(m: nn.Module, idx: Tensor) -> None:
    """Keep only input features ``idx`` of a Linear/Conv1D."""
    weight = cast(Tensor, m.weight)
    if _is_conv1d(m):
        m.weight = nn.Parameter(weight[idx].clone())
    else:
        m.weight = nn.Parameter(weight[:, idx].clone())
        set_attrs_(m, in_features=len(idx))


# -- architecture adapters ---------------------------------------------------------------------------

# Where each family keeps its blocks (under ``base_model``) and, inside a block, its FFN and attention
# projections: (modules whose outputs are the units, the module whose inputs are).
_BLOCKS = {"bert": "encoder.layer", "gpt2": "h", "llama": "layers"}
_FFN = {
    "bert": (["intermediate.dense"], "output.dense"),
    "gpt2": (["mlp.c_fc"], "mlp.c_proj"),
    "llama": (["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj"),
}
_ATTN = {
    "bert": (["attention.self.query", "attention.self.key", "attention.self.value"], "attention.output.dense"),
    "gpt2": (["attn.c_attn"], "attn.c_proj"),
    "llama": (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "self_attn.o_proj"),
}


# What a block must hold to be dropped whole (the config keeps the attention/FFN settings of the others).
_BLOCK_PARTS = {"bert": ("attention", "intermediate"), "gpt2": ("attn", "mlp"), "llama": ("self_attn", "mlp")}


def config_of(hf: PreTrainedModel) -> Any:
    """The model's config, untyped: its field names differ per family (``n_head``, ``num_attention_heads``...)."""
    return hf.config


def family(hf: PreTrainedModel, *, has_projections: bool = True) -> str:
    """``bert``, ``gpt2`` or ``llama``: the layout of the model's blocks.

    With ``has_projections`` (head and FFN surgery) every projection the surgery touches must exist, not only
    the block list: Phi has ``layers.N.self_attn`` and ``mlp`` like LLaMA but ``dense``/``fc1``/``fc2`` instead of
    ``o_proj``/``gate_proj``/``down_proj``, so it can lose whole layers but not heads.
    """
    mt = getattr(hf.config, "model_type", "")
    base = getattr(hf, "base_model", None)
    for fam, path in _BLOCKS.items():
        if fam == "gpt2" and mt != "gpt2":
            continue
        first = _submodule(base, f"{path}.0")
        parts = (*_FFN[fam][0], _FFN[fam][1], *_ATTN[fam][0], _ATTN[fam][1]) if has_projections else _BLOCK_PARTS[fam]
        if first is not None and all(_submodule(first, p) is not None for p in parts):
            return fam
    if has_projections and (blocks_fam := _blocks_family(hf)) is not None:
        first = _submodule(base, f"{_BLOCKS[blocks_fam]}.0")
        wanted = (*_ATTN[blocks_fam][0], _ATTN[blocks_fam][1], *_FFN[blocks_fam][0], _FFN[blocks_fam][1])
        missing = [p for p in wanted if _submodule(first, p) is None]
        raise UnsupportedModuleError(
            f"head and ffn pruning cut {blocks_fam}-style projections, and {type(hf).__name__} (model_type {mt!r}) has other ones "
            f"(no {', '.join(missing[:4])}); use granularity layer (whole blocks), or a mask granularity (weight, '2:4')."
        )
    raise UnsupportedModuleError(
        f"head/ffn/layer pruning supports BERT-like, GPT-2 and LLaMA-like layouts; {type(hf).__name__} (model_type {mt!r}) is none of "
        "them. Use a mask granularity (weight, '2:4') instead."
    )


def _blocks_family(hf: PreTrainedModel) -> str | None:
    try:
        return family(hf, has_projections=False)
    except UnsupportedModuleError:
        return None


def _submodule(module: nn.Module | None, path: str) -> nn.Module | None:
    if module is None:
        return None
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def blocks(hf: PreTrainedModel) -> nn.ModuleList:
    return cast(nn.ModuleList, hf.base_model.get_submodule(_BLOCKS[family(hf, has_projections=False)]))


def head_info(hf: PreTrainedModel) -> tuple[int, int, int]:
    """(heads, kv heads, head dim) of every layer."""
    c = config_of(hf)
    if family(hf, has_projections=False) == "gpt2":
        return c.n_head, c.n_head, c.n_embd // c.n_head
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return heads, kv, dim


def ffn_modules(fam: str, block: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """(modules whose outputs are FFN neurons, the module whose inputs are)."""
    ups, down = _FFN[fam]
    return [block.get_submodule(p) for p in ups], block.get_submodule(down)


def attn_modules(fam: str, block: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """(q, k, v projections (GPT-2: the fused c_attn), output projection)."""
    qkv, out = _ATTN[fam]
    return [block.get_submodule(p) for p in qkv], block.get_submodule(out)


def _w(m: nn.Module, scores: dict[nn.Module, Tensor]) -> Tensor:
    s = scores[m]
    return s.t() if _is_conv1d(m) else s  # (O, I)


# -- heads ---------------------------------------------------------------------------------------

def _head_scores(fam: str, block: nn.Module, scores: dict[nn.Module, Tensor], heads: int, kv: int, dim: int) -> Tensor:
    """Score of each prunable unit: a head (MHA) or a KV group (GQA). -> (units,)"""
    qkv, out = attn_modules(fam, block)
    per_q = _w(out, scores).sum(0).view(heads, dim).sum(1)  # (H,) from o-proj columns
    if fam == "gpt2":
        rows = _w(qkv[0], scores).sum(1).view(3, heads, dim).sum((0, 2))  # (H,)
        return per_q + rows
    per_q = per_q + _w(qkv[0], scores).sum(1).view(heads, dim).sum(1)
    per_kv = sum(_w(m, scores).sum(1).view(kv, dim).sum(1) for m in qkv[1:])  # (KV,)
    return per_q.view(kv, heads // kv).sum(1) + per_kv  # (KV,) one unit per KV group


def _unit_rows(units: Tensor, per_unit: int, dim: int) -> Tensor:
    return torch.cat([torch.arange(u * per_unit * dim, (u + 1) * per_unit * dim) for u in units.tolist()])


def prune_heads_(hf: PreTrainedModel, keep_units: int, scores: dict[nn.Module, Tensor]) -> HeadsPruned:
    """Keep ``keep_units`` heads (KV groups for GQA) in every layer. Returns the heads left and the units kept per layer."""
    fam = family(hf)
    heads, kv, dim = head_info(hf)
    rep = heads // kv
    kept: dict[int, list[int]] = {}
    for i, block in enumerate(blocks(hf)):
        keep = _head_scores(fam, block, scores, heads, kv, dim).topk(keep_units).indices.sort().values
        kept[i] = keep.tolist()
        qkv, out = attn_modules(fam, block)
        q_rows = _unit_rows(keep, rep, dim)
        if fam == "gpt2":
            width = heads * dim
            keep_outputs_(qkv[0], torch.cat([q_rows + j * width for j in range(3)]))
            set_attrs_(block.get_submodule("attn"), num_heads=keep_units, split_size=keep_units * dim)
        else:
            keep_outputs_(qkv[0], q_rows)
            for m in qkv[1:]:
                keep_outputs_(m, _unit_rows(keep, 1, dim))
            if fam == "bert":
                set_attrs_(block.get_submodule("attention.self"), num_attention_heads=keep_units, all_head_size=keep_units * dim)
        keep_inputs_(out, q_rows)
    c = config_of(hf)
    if fam == "llama":
        c.num_attention_heads, c.num_key_value_heads, c.head_dim = keep_units * rep, keep_units, dim
    return HeadsPruned(keep_units * rep, kept, needs_hf_pruned_format=fam != "llama")


# -- FFN -----------------------------------------------------------------------------------------

def prune_ffn_(hf: PreTrainedModel, keep: int, scores: dict[nn.Module, Tensor]) -> None:
    """Keep ``keep`` FFN neurons in every layer; updates the config's intermediate size."""
    fam = family(hf)
    for block in blocks(hf):
        ups, down = ffn_modules(fam, block)
        s = sum(_w(m, scores).sum(1) for m in ups) + _w(down, scores).sum(0)  # (I,)
        idx = s.topk(keep).indices.sort().values
        for m in ups:
            keep_outputs_(m, idx)
        keep_inputs_(down, idx)
    if fam == "gpt2":
        config_of(hf).n_inner = keep
    else:
        config_of(hf).intermediate_size = keep


# -- layers --------------------------------------------------------------------------------------

def drop_layers_(hf: PreTrainedModel, drop: list[int]) -> LayersDropped:
    """Remove whole blocks ``drop``; renumbers ``layer_idx`` (KV cache) and updates the config."""
    fam = family(hf, has_projections=False)
    old = blocks(hf)
    kept = [b for i, b in enumerate(old) if i not in set(drop)]
    new = nn.ModuleList(kept)
    parent, _, name = _BLOCKS[fam].rpartition(".")
    hf.base_model.get_submodule(parent).register_module(name, new)  # parent "" is base_model itself
    for i, block in enumerate(new):
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                set_attrs_(m, layer_idx=i)
    c = config_of(hf)
    if getattr(c, "layer_types", None):
        c.layer_types = [t for i, t in enumerate(c.layer_types) if i not in set(drop)]
    if fam == "gpt2":
        c.n_layer = len(new)
    else:
        c.num_hidden_layers = len(new)
    return LayersDropped(sorted(drop), len(new))


@torch.no_grad()
def block_influence(model: nn.Module, hf: PreTrainedModel, batches: list[Any]) -> Tensor:
    """``1 - cos(h_in, h_out)`` of each block on calibration data (ShortGPT, https://arxiv.org/abs/2403.03853).

    Averaged over real tokens only: padding positions carry no text, and on batches padded to a fixed
    length they would outnumber the words and decide the ranking (MiniLM at 128 tokens: layer 0
    instead of layer 2).
    """
    bl = blocks(hf)
    sums = torch.zeros(len(bl))
    ins: dict[int, Tensor] = {}
    mask: list[Tensor | None] = [None]  # the current batch's attention mask (B, T), or None

    def pre(i: int) -> Any:
        def run(_: nn.Module, args: tuple, kwargs: dict) -> None:
            ins[i] = (args[0] if args else kwargs["hidden_states"]).detach()
        return run

    def post(i: int) -> Any:
        def run(_: nn.Module, __: Any, out: Any) -> None:
            h = out[0] if isinstance(out, tuple) else out
            distance = 1 - torch.nn.functional.cosine_similarity(ins[i], h.detach(), dim=-1)  # (B, T)
            m = mask[0]
            real = m.to(distance.device) if m is not None and m.shape == distance.shape else torch.ones_like(distance)
            sums[i] += float(masked_token_mean(distance, real))
        return run

    handles = [b.register_forward_pre_hook(pre(i), with_kwargs=True) for i, b in enumerate(bl)]
    handles += [b.register_forward_hook(post(i)) for i, b in enumerate(bl)]
    try:
        for x, _ in batches:
            mask[0] = x.get("attention_mask") if isinstance(x, dict) else None
            forward(model, x)
    finally:
        for h in handles:
            h.remove()
    return sums / max(len(batches), 1)


# -- stage entry ---------------------------------------------------------------------------------

def _linear_targets(hf: PreTrainedModel) -> dict[str, nn.Module]:
    root = blocks(hf)
    return {f"{i}.{n}": m for i, b in enumerate(root) for n, m in b.named_modules()
            if isinstance(m, nn.Linear) or _is_conv1d(m)}


def prune_transformer(model: nn.Module, cfg: PruneConfig, ctx: RunContext, example: Batch) -> PruneResult:
    """The ``transformer`` method: head, FFN or layer surgery on an ``HFModel`` (``example`` is not needed: it calibrates on train batches)."""
    crit = build_importance(cfg.criterion, p=cfg.p, seed=ctx.seed)
    hf = getattr(model, "hf", None)
    if hf is None:
        raise UnsupportedModuleError(
            f"granularity {cfg.granularity!r} needs a Hugging Face transformer (hf:...); this is a {type(model).__name__}. "
            "Use filter/neuron for CNNs and MLPs."
        )
    fam = family(hf, has_projections=cfg.granularity != "layer")
    targets = _linear_targets(hf)
    batches = list(itertools.islice(ctx.data.loader("train", shuffle=True, seed=ctx.seed), cfg.calibration_batches))
    if crit.needs_data:
        crit.prepare(model, targets, batches, calibration_loss(ctx.task, getattr(model, "kind", None)))
    scores = {m: crit.scores(f, m).float() for f, m in targets.items()}
    notes: list[str] = []
    change: HeadsPruned | FfnPruned | LayersDropped
    if cfg.granularity == "head":
        change = _prune_heads(model, hf, fam, cfg, scores, notes)
    elif cfg.granularity == "ffn":
        inter = _w(ffn_modules(fam, blocks(hf)[0])[1], scores).shape[1]
        keep = max(1, round((1 - cfg.sparsity) * inter))
        if cfg.round_to:
            keep = max(cfg.round_to, round(keep / cfg.round_to) * cfg.round_to)
        prune_ffn_(hf, keep, scores)
        change = FfnPruned(inter, keep)
    else:
        n = len(blocks(hf))
        n_drop = min(n - 1, round(cfg.sparsity * n))
        influence = None
        if cfg.criterion == "activation":
            per_layer = block_influence(model, hf, batches)
            influence = [float(v) for v in per_layer]
        else:
            per_layer = torch.tensor([sum(float(scores[m].mean()) for m in b.modules() if m in scores) for b in blocks(hf)])
        change = replace(drop_layers_(hf, per_layer.argsort()[:n_drop].tolist()), block_influence=influence)
    notes.append("removed transformer structure usually needs recovery: distil from the original (add a distill stage or recover: distill).")
    return PruneResult(model, TransformerDetails(fam, change), notes)


def _prune_heads(model: nn.Module, hf: PreTrainedModel, fam: str, cfg: PruneConfig, scores: dict[nn.Module, Tensor],
                 notes: list[str]) -> HeadsPruned:
    heads, kv, _dim = head_info(hf)
    keep = max(1, round((1 - cfg.sparsity) * kv))
    info = prune_heads_(hf, keep, scores)
    if info.needs_hf_pruned_format:
        set_attrs_(model, slimtorch_format="hf_pruned")
        notes.append(
            f"{fam} configs derive the head size from hidden_size / num_heads, so no config describes fewer heads; the "
            "model is saved in slimtorch's hf_pruned format: plain from_pretrained loads hf/ with the removed heads as "
            "zeros (same outputs, unpruned attention size), slimtorch.load removes them again."
        )
    if kv != heads:
        notes.append(f"grouped-query attention: pruned whole KV groups ({heads // kv} query heads each).")
    return info

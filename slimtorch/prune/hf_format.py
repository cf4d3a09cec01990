"""The ``hf_pruned`` artifact format: a Hugging Face model whose shapes its config cannot express.

BERT and GPT-2 configs derive the head size from ``hidden_size / num_heads``, so a model with fewer heads has no
config of its own. It is saved like ``hf`` (``save_pretrained``, masks baked in) with the removed heads put back as
zero weights: plain ``transformers`` then loads ``hf/`` with the original head count and computes the same outputs
(a head whose query, key and value rows and output columns are zero adds exactly nothing), at the unpruned
attention's size on disk. ``pruned_shapes.json`` records the heads really used; slimtorch's loader removes the zero
heads again. (Artifacts written before the padding stored the smaller weights; they still load.)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from slimtorch.artifact import FORMATS, ArtifactFormat
from slimtorch.errors import ArtifactError
from slimtorch.io import atomic_write_json
from slimtorch.models.attrs import set_attrs_
from slimtorch.models.hf import HFModel, _auto_class, load_hf
from slimtorch.prune.masks import bake_masks_
from slimtorch.prune.transformers import attn_modules, blocks, family, head_info, prune_heads_

SHAPES_FILE = "pruned_shapes.json"


def _save(model: nn.Module, directory: Path) -> None:

    baked = bake_masks_(copy.deepcopy(model))
    assert isinstance(baked, HFModel), "only head pruning of an HFModel selects the hf_pruned format"
    shapes: dict[str, Any] = {"kind": baked.kind}
    fam = family(baked.hf)
    if fam in ("bert", "gpt2"):
        first = blocks(baked.hf)[0]
        qkv = cast(Tensor, attn_modules(fam, first)[0][0].weight)  # BERT: query (O, I); GPT-2: the fused c_attn (I, 3 O)
        out_features = qkv.shape[0] if fam == "bert" else qkv.shape[1] // 3
        shapes["heads_per_layer"] = out_features // head_info(baked.hf)[2]
        _pad_heads_(baked.hf, fam)
        shapes["padded"] = True
    baked.hf.save_pretrained(directory / "hf", safe_serialization=True)
    if baked.tokenizer is not None:
        baked.tokenizer.save_pretrained(directory / "hf")
    atomic_write_json(directory / "hf_kind.json", {"kind": baked.kind})
    atomic_write_json(directory / SHAPES_FILE, shapes)


@torch.no_grad()
def _pad_heads_(hf: Any, fam: str) -> None:
    """Give every layer the config's head count again, the added heads all zero (plain transformers then loads it)."""

    heads, _kv, dim = head_info(hf)  # the config still holds the original head count
    full = heads * dim
    for block in blocks(hf):
        qkv, out = attn_modules(fam, block)
        if fam == "gpt2":  # Conv1D c_attn (I, 3 O) as [q | k | v]; c_proj (O, I)
            w, b = cast(Tensor, qkv[0].weight), cast(Tensor, qkv[0].bias)
            part = w.shape[1] // 3
            new_w, new_b = w.new_zeros(w.shape[0], 3 * full), b.new_zeros(3 * full)
            for j in range(3):
                new_w[:, j * full : j * full + part] = w[:, j * part : (j + 1) * part]
                new_b[j * full : j * full + part] = b[j * part : (j + 1) * part]
            qkv[0].weight, qkv[0].bias = nn.Parameter(new_w), nn.Parameter(new_b)
            set_attrs_(qkv[0], nf=3 * full)
            w = cast(Tensor, out.weight)
            new = w.new_zeros(full, w.shape[1])
            new[: w.shape[0]] = w
            out.weight = nn.Parameter(new)
            set_attrs_(block.get_submodule("attn"), num_heads=heads, split_size=full)
        else:  # BERT: Linear query/key/value (O, I), output.dense (H, O)
            for m in qkv:
                lw, lb = cast(Tensor, m.weight), cast("Tensor | None", m.bias)
                new_w = lw.new_zeros(full, lw.shape[1])
                new_w[: lw.shape[0]] = lw
                m.weight = nn.Parameter(new_w)
                if lb is not None:
                    new_b = lb.new_zeros(full)
                    new_b[: lb.shape[0]] = lb
                    m.bias = nn.Parameter(new_b)
                set_attrs_(m, out_features=full)
            w = cast(Tensor, out.weight)
            new = w.new_zeros(w.shape[0], full)
            new[:, : w.shape[1]] = w
            out.weight = nn.Parameter(new)
            set_attrs_(out, in_features=full)
            set_attrs_(block.get_submodule("attention.self"), num_attention_heads=heads, all_head_size=full)


def _load_padded(directory: Path, shapes: dict[str, Any]) -> nn.Module:
    """A padded artifact: plain ``from_pretrained``, then the zero heads removed (they score zero by magnitude)."""

    model = load_hf(str(directory / "hf"), kind=shapes["kind"])
    hf = model.hf
    keep = int(shapes["heads_per_layer"])
    if keep < head_info(hf)[0]:
        scores = {m: m.weight.detach().abs() for m in hf.modules()
                  if hasattr(m, "weight") and isinstance(m.weight, torch.Tensor)}
        prune_heads_(hf, keep, scores)
    return set_attrs_(model, slimtorch_format="hf_pruned")


def _load(directory: Path, spec: dict[str, Any]) -> nn.Module:
    import transformers
    from safetensors.torch import load_file


    try:
        shapes = json.loads((directory / SHAPES_FILE).read_text())
        if shapes.get("padded"):
            return _load_padded(directory, shapes)
        config = transformers.AutoConfig.from_pretrained(directory / "hf", trust_remote_code=False)
        state = load_file(str(directory / "hf" / "model.safetensors"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{directory} is not a complete hf_pruned artifact ({exc}); re-run the stage that wrote it.") from exc
    hf = getattr(transformers, _auto_class(shapes["kind"])).from_config(config)
    if "heads_per_layer" in shapes:
        zeros = {m: torch.zeros_like(m.weight) for m in hf.modules() if hasattr(m, "weight") and isinstance(m.weight, torch.Tensor)}
        heads = head_info(hf)[0]
        if shapes["heads_per_layer"] < heads:
            prune_heads_(hf, shapes["heads_per_layer"], zeros)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    tied = set(getattr(hf, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied and "lm_head" not in k]:
        raise ArtifactError(f"{directory}: weights do not match the pruned architecture (missing {missing[:5]}, unexpected {unexpected[:5]}).")
    if hasattr(hf, "tie_weights"):
        hf.tie_weights()
    tokenizer = None
    if (directory / "hf" / "tokenizer_config.json").exists():
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory / "hf", trust_remote_code=False)
    model = HFModel(hf.eval(), tokenizer, shapes["kind"])
    return set_attrs_(model, slimtorch_format="hf_pruned")


FORMATS.register("hf_pruned")(ArtifactFormat(_save, _load))

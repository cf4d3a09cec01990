"""The ``hf_pruned`` artifact format: a Hugging Face model whose shapes its config cannot express.

Saved like ``hf`` (``save_pretrained`` with masks baked in) plus ``pruned_shapes.json``; loading builds
the model from its config, re-applies the recorded head count, then reads the safetensors weights.
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
from slimtorch.prune.masks import bake_masks_

SHAPES_FILE = "pruned_shapes.json"


def _save(model: nn.Module, directory: Path) -> None:
    from slimtorch.models.hf import HFModel
    from slimtorch.prune.transformers import attn_modules, blocks, family, head_info

    baked = bake_masks_(copy.deepcopy(model))
    assert isinstance(baked, HFModel), "only head pruning of an HFModel selects the hf_pruned format"
    baked.hf.save_pretrained(directory / "hf", safe_serialization=True)
    if baked.tokenizer is not None:
        baked.tokenizer.save_pretrained(directory / "hf")
    shapes: dict[str, Any] = {"kind": baked.kind}
    fam = family(baked.hf)
    if fam in ("bert", "gpt2"):
        first = blocks(baked.hf)[0]
        qkv = cast(Tensor, attn_modules(fam, first)[0][0].weight)  # BERT: query (O, I); GPT-2: the fused c_attn (I, 3 O)
        out_features = qkv.shape[0] if fam == "bert" else qkv.shape[1] // 3
        shapes["heads_per_layer"] = out_features // head_info(baked.hf)[2]
    atomic_write_json(directory / "hf_kind.json", {"kind": baked.kind})
    atomic_write_json(directory / SHAPES_FILE, shapes)


def _load(directory: Path, spec: dict[str, Any]) -> nn.Module:
    import transformers
    from safetensors.torch import load_file

    from slimtorch.models.hf import HFModel, _auto_class
    from slimtorch.prune.transformers import head_info, prune_heads_

    try:
        shapes = json.loads((directory / SHAPES_FILE).read_text())
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

"""Layer-wise transformer distillation: find the layer stacks, map student layers to teacher layers, make the pairs.

:func:`transformer_pairs` expands the ``features: transformer`` preset
(:class:`~slimtorch.distill.config.TransformerFeatures`) into plain :class:`FeatureSpec` pairs, so the
engine, its taps, adapters and teacher cache treat them like hand-written hint pairs.

The layer map (student layer i learns from teacher layer ``map[i]``) is, in order of preference:

1. ``layer_map`` from the recipe;
2. the teacher layers the student still holds: an ``auto`` student records them
   (``slimtorch_spec["derived"]["kept_layers"]``); a layer-pruned copy is recognised by its weights
   (each student layer is the teacher layer whose same-named weights are nearest, if near enough and in
   order), which also holds after some training;
3. uniform (TinyBERT, https://arxiv.org/abs/1909.10351): layer i of k ← teacher layer ⌈(i+1)·n/k⌉ − 1.

The student's last layer always learns the teacher's last layer, whose output the stage's output loss
matches too (a DistilBERT-style student keeping layers 0, 2, 4 of 6 maps to [0, 2, 5]).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimtorch.distill.config import FeatureSpec, TransformerFeatures
from slimtorch.errors import RecipeError, UnsupportedModuleError

# A student layer counts as "the same" teacher layer when its weights are within this relative distance
# (an exact copy is 0; training at distillation learning rates moves them by ~1e-2; two different layers of
# MiniLM are ~1.4 apart).
SAME_LAYER_DISTANCE = 0.5
PROJECTIONS = {"query": ("query", "q_proj", "q_lin"), "key": ("key", "k_proj", "k_lin"), "value": ("value", "v_proj", "v_lin")}


def _layer_count(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not isinstance(count, int):
        raise UnsupportedModuleError(
            f"distill.features: transformer needs Hugging Face transformers (hf:...) on both sides; {type(model).__name__} has "
            "no config.num_hidden_layers. Give explicit {student, teacher} module pairs instead."
        )
    return count


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The fqn and the ``ModuleList`` of a transformer's layers (``hf.encoder.layer``, ``hf.model.layers``...)."""
    count = _layer_count(model)
    for fqn, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and count > 0:
            return fqn, module
    raise UnsupportedModuleError(f"distill.features: transformer cannot find the {count} layers of {type(model).__name__}.")


def uniform_map(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's uniform map: student layer i of k learns teacher layer ⌈(i+1)·n/k⌉ − 1 (the last learns the last)."""
    return [math.ceil((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


@torch.no_grad()
def layer_distance(student_layer: nn.Module, teacher_layer: nn.Module) -> float:
    """``‖s − t‖ / ‖t‖`` over the parameters the two layers share by name and shape (``inf`` when none)."""
    teacher_params = dict(teacher_layer.named_parameters())
    diff, norm = 0.0, 0.0
    for name, p in student_layer.named_parameters():
        t = teacher_params.get(name)
        if t is not None and t.shape == p.shape:
            diff += float((p.float() - t.float()).pow(2).sum())
            norm += float(t.float().pow(2).sum())
    return math.sqrt(diff / norm) if norm > 0 else math.inf


def matched_layers(student_layers: nn.ModuleList, teacher_layers: nn.ModuleList) -> list[int] | None:
    """The teacher layer each student layer still is (nearest by weights), or None when that is not clear."""
    found = []
    for s in student_layers:
        distances = [layer_distance(s, t) for t in teacher_layers]
        best = min(range(len(distances)), key=distances.__getitem__)
        if distances[best] > SAME_LAYER_DISTANCE:
            return None
        found.append(best)
    return found if all(b > a for a, b in itertools.pairwise(found)) else None


def _recorded_layers(student: nn.Module) -> list[int] | None:
    derived = (getattr(student, "slimtorch_spec", None) or {}).get("derived") or {}
    kept = derived.get("kept_layers")
    return [int(i) for i in kept] if isinstance(kept, list) and kept else None


def layer_map(spec: TransformerFeatures, student: nn.Module, teacher: nn.Module) -> tuple[list[int], str]:
    """(teacher layer of each student layer, where the map came from: given | recorded | weights | uniform)."""
    _, s_layers = layer_stack(student)
    _, t_layers = layer_stack(teacher)
    k, n = len(s_layers), len(t_layers)
    if spec.layer_map is not None:
        if len(spec.layer_map) != k or spec.layer_map[-1] >= n:
            raise RecipeError(
                f"distill.features.transformer.layer_map {spec.layer_map} must give one teacher layer (0..{n - 1}) for each of "
                f"the student's {k} layers; e.g. {uniform_map(k, n)}."
            )
        return list(spec.layer_map), "given"
    for source, kept in (("recorded", _recorded_layers(student)), ("weights", matched_layers(s_layers, t_layers))):
        if kept is not None and len(kept) == k and kept[-1] < n:
            return [*kept[:-1], n - 1], source
    return uniform_map(k, n), "uniform"


def projection_fqn(model: nn.Module, layer_fqn: str, which: str) -> str:
    """The fqn of a layer's query/key/value projection (BERT ``attention.self.query``, LLaMA ``self_attn.q_proj``...)."""
    layer = model.get_submodule(layer_fqn)
    for name, module in layer.named_modules():
        if name.rsplit(".", 1)[-1] in PROJECTIONS[which] and isinstance(module, nn.Linear):
            return f"{layer_fqn}.{name}"
    raise UnsupportedModuleError(
        f"distill.features.transformer.relations: layer {layer_fqn!r} has no separate {which} projection (looked for "
        f"{', '.join(PROJECTIONS[which])}); fused qkv layers (GPT-2) are not supported. Set relations: [] or give pairs by hand."
    )


@dataclass
class LayerPairs:
    """The pairs one preset expanded to, and the map behind them (for the stage's record)."""

    pairs: list[FeatureSpec]
    layer_map: list[int]
    source: str

    def details(self) -> dict[str, Any]:
        return {"layer_map": self.layer_map, "layer_map_source": self.source, "pairs": [p.model_dump() for p in self.pairs]}


def transformer_pairs(spec: TransformerFeatures, student: nn.Module, teacher: nn.Module) -> LayerPairs:
    """Hidden-state pairs of every student layer and relation pairs of the last layers, as :class:`FeatureSpec`."""
    s_prefix, s_layers = layer_stack(student)
    t_prefix, t_layers = layer_stack(teacher)
    mapping, source = layer_map(spec, student, teacher)
    pairs = []
    if spec.hidden != "none" and spec.hidden_weight > 0:
        pairs += [FeatureSpec(student=f"{s_prefix}.{i}", teacher=f"{t_prefix}.{j}", weight=spec.hidden_weight, loss=spec.hidden)
                  for i, j in enumerate(mapping)]
    if spec.relation_weight > 0:
        s_last, t_last = f"{s_prefix}.{len(s_layers) - 1}", f"{t_prefix}.{len(t_layers) - 1}"
        pairs += [FeatureSpec(student=projection_fqn(student, s_last, r), teacher=projection_fqn(teacher, t_last, r),
                              weight=spec.relation_weight, loss="relation", relation_heads=spec.relation_heads)
                  for r in spec.relations]
    return LayerPairs(pairs, mapping, source)

"""What a stage is, said once by its config: whether it trains, what it hands on, what it can take.

A stage config answers :meth:`StageConfig.stage_tags` (scikit-learn's ``__sklearn_tags__`` shape: a
dataclass returned by a method and refined by subclasses). The recipe checks stage order with these
tags and the run decides what trains with them, so no module keeps its own list of stage names. A
leaf (pydantic only): recipes load without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

# What a stage hands to the next one: a torch model with float weights, one with bfloat16 weights, one whose
# layers became int8/int4 kernels, or a graph for another runtime (onnxruntime, OpenVINO, llama.cpp, ExecuTorch).
Handoff = Literal["torch", "torch_bf16", "torch_int", "graph"]
FLOAT_TORCH: frozenset[Handoff] = frozenset({"torch", "torch_bf16"})


@dataclass(frozen=True)
class StageTags:
    """A stage's capabilities.

    Attributes:
        trains: updates the weights by gradient descent, so it recovers accuracy an earlier step cost.
        backward: runs backward passes on the model (training, or gradient-based pruning scores), so the
            model's memory check counts gradients and optimizer state.
        deploys: turns the model into what ships (quantize, export); a recipe ``target:`` adds its own.
        hands_on: what the next stages receive; several when the runtime is chosen at run time.
        takes: what this stage can work on.
        runtime: what runs the handed-on model, for messages ("onnxruntime", "llama.cpp").
        label: the stage's settings that decide the above, for messages ("mode bf16, runtime torch").
        instead: how to get something later stages can take, when there is a better way than reordering.
    """

    trains: bool = False
    backward: bool = False
    deploys: bool = False
    hands_on: frozenset[Handoff] = frozenset({"torch"})
    takes: frozenset[Handoff] = FLOAT_TORCH
    runtime: str = "torch"
    label: str = ""
    instead: str = field(default="")

    def refusal(self, later: StageTags) -> str | None:
        """Why a later stage with tags ``later`` cannot work on what this one hands on (``which ...``), or None."""
        refused = self.hands_on - later.takes
        if not refused:
            return None
        if "graph" in refused:
            article = "an" if self.runtime[:1].lower() in "aeiou" else "a"
            return f"turns the model into {article} {self.runtime} graph with no torch layers left to prune, train, quantize or export"
        if "torch_int" in refused:
            return "replaces its layers with int8/int4 kernels that have no float weights to prune, train or export"
        return "leaves bfloat16 weights that onnxruntime has no kernels for"


class StageConfig(BaseModel):
    """Base of every stage's recipe entry: strict (unknown keys are errors), frozen, and tagged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def stage_tags(self) -> StageTags:
        """This stage's capabilities; the defaults describe a stage that changes a float torch model without training."""
        return StageTags()


def tags_of(config: object) -> StageTags:
    """The tags of any stage config; a user stage whose config is a plain pydantic model gets the defaults."""
    method = getattr(config, "stage_tags", None)
    return method() if callable(method) else StageTags()

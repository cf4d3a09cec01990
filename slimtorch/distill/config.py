"""The ``distill`` stage's recipe entry: loss, temperature, λ, teachers, assistant, feature taps, DDP."""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slimtorch.train.config import TrainConfig, train_fields

FeatureLossName = Literal["mse", "cosine", "relation"]
Projection = Literal["query", "key", "value"]


class FeatureSpec(BaseModel):
    """One hint pair: match the student's module ``student`` to the teacher's module ``teacher``.

    Both are fully-qualified module names (``fqn``, as in ``model.named_modules()``), e.g. ``net.1``.
    ``loss`` says how (:data:`~slimtorch.distill.losses.FEATURE_LOSSES`): ``mse`` (FitNets hints,
    https://arxiv.org/abs/1412.6550; TinyBERT's hidden-state loss), ``cosine`` (1 − cos per token or
    example) or ``relation`` (MiniLMv2's self-attention relations of a query/key/value projection,
    https://arxiv.org/abs/2012.15828). Token features (B, T, H) of text batches skip padded tokens.
    When widths differ a learned linear (last dim) or 1×1 conv (channel dim) adapter maps the
    student's feature to the teacher's width for ``mse``/``cosine``; ``relation`` compares (T, T)
    maps and needs none.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    student: str = Field(min_length=1)
    teacher: str = Field(min_length=1)
    weight: float = Field(1.0, ge=0, description="weight of this pair's loss in the total loss")
    loss: FeatureLossName = Field("mse", description="mse | cosine | relation")
    relation_heads: int = Field(12, ge=1, description="relation: heads the width is split into (it must divide both widths)")


class TransformerFeatures(BaseModel):
    """Layer-wise distillation of a transformer, expanded into :class:`FeatureSpec` pairs for the two models.

    ``distill: {features: transformer}`` (these defaults) or ``features: {transformer: {...}}``: every
    student layer's output hidden states against its teacher layer's (``hidden``), and MiniLMv2
    self-attention relations of the last layers' query/key/value projections (``relations``), beside
    the stage's output loss. The layer map says which teacher layer each student layer learns from:
    given, else the teacher layers the student kept (a layer-pruned copy or an ``auto`` student, found
    from its weights), else uniform (TinyBERT: student layer i of k ← teacher layer ⌈(i+1)·n/k⌉ − 1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: Literal["mse", "cosine", "none"] = Field("mse", description="loss on every mapped layer's output hidden states")
    hidden_weight: float = Field(1.0, ge=0)
    relations: list[Projection] = Field(
        default_factory=list, description="MiniLMv2 relations of the last layers, e.g. [query, key, value] (default none: on a "
                                          "layer-pruned MiniLM they added nothing to the hidden-state loss; docs/PIPELINE.md)")
    relation_weight: float = Field(1.0, ge=0, description="weight of each relation loss (MiniLMv2 sums them)")
    relation_heads: int = Field(12, ge=1, description="relation heads (MiniLMv2: the teacher's attention heads)")
    layer_map: list[int] | None = Field(None, description="teacher layer index for each student layer, in order (default: "
                                                          "the layers the student kept, else uniform)")

    @field_validator("layer_map")
    @classmethod
    def _check_map(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(b <= a for a, b in itertools.pairwise(value)) or min(value) < 0):
            raise ValueError(f"distill.features.transformer.layer_map must be non-negative, strictly increasing teacher layer "
                             f"indices, one per student layer; got {value}. Example for 3 of 6 layers: [1, 3, 5].")
        return value


class AssistantSpec(BaseModel):
    """A teaching assistant: ``{model: mlp, args: {hidden: [256]}}`` (the same shape as ``student:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)
    epochs: int | None = Field(None, ge=0, description="epochs for the teacher→assistant hop (default: the stage's)")


class DDPSpec(BaseModel):
    """Train on ``world_size`` local processes with torch.distributed (gloo works on CPU)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    world_size: int = Field(2, ge=1)
    backend: Literal["gloo", "nccl"] = "gloo"
    port: int | None = Field(None, ge=1024, le=65535, description="rendezvous port (default: a free one)")


class TokenSpec(BaseModel):
    """Token-level distillation of a causal LM (student and teachers ``kind: causal_lm``): how text becomes sequences.

    The distillation text (its lines joined with newlines) is tokenized with the student's tokenizer and
    cut into sequences of ``seq_tokens`` tokens (packed: no sentence padding; only the last, shorter
    sequence is padded and its padding masked). The loss is ``λ·CE(next token) + (1 − λ)·T²·KL(p_T ‖ q_S)``
    averaged over every real position. With ``cache_teacher`` the teachers' ``top_k`` log-probabilities
    per position (and the mass of the other tokens as one bucket) are computed once, so steps run the
    student alone; without it the teachers run live and the KL is over the full vocabulary.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq_tokens: int = Field(128, description="tokens per training sequence (the student's tokenizer)")
    top_k: int = Field(64, description="teacher log-probabilities cached per position (the rest of the vocabulary is one "
                                       "bucket); k = the vocabulary size caches the full distribution")
    max_sequences: int | None = Field(None, ge=1, description="keep at most this many training sequences (the first, in the "
                                                              "data's order); the teacher cache is built for these only")
    heldout_sequences: int = Field(16, ge=1, description="sequences of the val split on which the KL to the teacher is "
                                                         "measured (before, after, and each epoch as the val metric)")

    @field_validator("seq_tokens")
    @classmethod
    def _check_seq_tokens(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"distill.tokens.seq_tokens must be at least 2; got {value}. A sequence of T tokens gives the "
                             "student T next-token distributions to learn; 128 is a good start.")
        return value

    @field_validator("top_k")
    @classmethod
    def _check_top_k(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"distill.tokens.top_k must be at least 1; got {value}. It is how many of the teacher's most "
                             "likely next tokens are cached per position; 64 is the usual choice.")
        return value


class DistillConfig(TrainConfig):
    """Knowledge distillation (Hinton et al. 2015, https://arxiv.org/abs/1503.02531).

    ``L = alpha·CE(y, q_S(T=1)) + (1 − alpha)·T²·KL(p_T(T) ‖ q_S(T))``: the CE term is the mean over the
    batch's *labeled* rows, the soft-target term the mean over all rows (unlabeled transfer-set rows,
    label ``-1``, scenario 2, only have that term). So ``alpha`` weighs the two terms as written
    whatever fraction of a batch is labeled. The training fields (``epochs`` as a ceiling, ``lr``,
    ``schedule``, ``patience``, ...) are :class:`~slimtorch.train.TrainConfig`'s.

    Unset, ``temperature`` is 2 and ``alpha`` 0.5. A causal-LM student learns token by token
    (:class:`TokenSpec`): there the CE is on the text's next tokens and, unless set, ``alpha`` is 0 (the
    text has no labels beyond itself), ``temperature`` 1 (the distribution perplexity is measured on)
    and ``lr`` 5e-5 (a pretrained model recovering).
    """

    temperature: float | None = Field(None, description="softmax temperature T of the soft targets (T > 0); default 2, and 1 "
                                                         "for a causal LM")
    alpha: float | None = Field(None, description="λ: weight of the hard-label cross-entropy, in [0, 1]; default 0.5, and 0 "
                                                  "for a causal LM (its CE is on the text's next tokens)")
    loss: Literal["kd", "mse", "cosine"] = Field(
        "kd", description="kd: Hinton KD on logits; mse: MSE on logits/embeddings; cosine: 1 − cos on embeddings")
    epochs: int = Field(20, ge=0, description="ceiling on passes over the distillation set; training stops earlier once converged")
    lr: float | Literal["auto"] | None = Field(  # type: ignore[assignment]  # None: chosen by loss, see the description
        None, description="AdamW peak rate, or 'auto' (a short range test); default: auto for loss kd (a student trained "
                          "from its initialisation), 1e-3 for mse/cosine (usually a pretrained encoder)")
    use_transfer: bool = Field(True, description="also train on the unlabeled transfer set (scenario 2) when there is one")
    teacher_weights: list[float] | None = Field(None, description="weights of the teachers' soft targets (default: equal)")
    assistant: AssistantSpec | None = None
    features: list[FeatureSpec] | TransformerFeatures = Field(
        default_factory=list, description="hint pairs, or the transformer preset (`transformer` or {transformer: {...}})")
    cache_teacher: bool = Field(True, description="compute teacher outputs (and features) once per run, in fp16 (skipped if "
                                                  "the data is random)")
    cache_max_mb: float = Field(1024.0, gt=0, description="a teacher cache larger than this goes to a file in the stage's "
                                                          "work directory instead of memory")
    freeze: list[str] = Field(default_factory=list, description="parameter-name globs kept fixed, e.g. ['*embeddings*']")
    use_dropout: bool = Field(True, description="false: the student's dropout is off while it trains (a pretrained student "
                                                "matching its teacher closely)")
    examples_per_epoch: int | None = Field(None, ge=1, description="an epoch is this many examples drawn at random from the "
                                                                   "distillation set (validation, checkpoints and the "
                                                                   "convergence check that often on a large corpus)")
    compare_labels_only: bool = Field(False, description="also train the same student, from the same starting weights and with the "
                                                         "same training settings, on the labels alone (no teacher) and report it "
                                                         "beside the distilled one: the control that shows what distillation added")
    ddp: DDPSpec | None = None
    tokens: TokenSpec = Field(default_factory=TokenSpec, description="causal LMs: sequence length, top-k teacher cache, "
                                                                     "held-out text (see TokenSpec)")

    @field_validator("features", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if value == "transformer":
            return TransformerFeatures()
        if isinstance(value, dict) and set(value) == {"transformer"}:
            return TransformerFeatures(**(value["transformer"] or {}))
        if isinstance(value, str):  # pydantic turns only ValueError into a validation error, so not TypeError
            raise ValueError(  # noqa: TRY004
                f"distill.features must be a list of {{student, teacher}} pairs, 'transformer', or {{transformer: {{...}}}}; "
                f"got {value!r}.")
        return value  # a list of pairs, or a dumped TransformerFeatures (round trip)

    @field_validator("temperature")
    @classmethod
    def _check_temperature(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(
                f"distill.temperature must be > 0; got {value}. T divides the logits before the softmax: "
                "T = 1 is the plain softmax, T = 2-5 softens it (2 is a good start)."
            )
        return value

    @field_validator("alpha")
    @classmethod
    def _check_alpha(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(
                f"distill.alpha must be in [0, 1]; got {value}. alpha is λ, the weight of the hard-label loss: "
                "0 = soft targets only, 1 = labels only; 0.5 weighs them equally."
            )
        return value

    @field_validator("teacher_weights")
    @classmethod
    def _check_weights(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(w < 0 for w in value) or sum(value) <= 0):
            raise ValueError(
                f"distill.teacher_weights must be non-negative with a positive sum, one per teacher; got {value}."
            )
        return value

    @property
    def temperature_value(self) -> float:
        """T as given, else 2 (the default for classifiers and encoders; causal LMs: :mod:`~slimtorch.distill.token_hop`)."""
        return 2.0 if self.temperature is None else self.temperature

    @property
    def alpha_value(self) -> float:
        """λ as given, else 0.5 (the default for classifiers and encoders; causal LMs: :mod:`~slimtorch.distill.token_hop`)."""
        return 0.5 if self.alpha is None else self.alpha

    def train_config(self, epochs: int | None = None) -> TrainConfig:
        """The optimiser settings for :func:`slimtorch.train.fit`."""
        lr = self.lr if self.lr is not None else ("auto" if self.loss == "kd" else 1e-3)
        return TrainConfig(**{**train_fields(self), "epochs": self.epochs if epochs is None else epochs, "lr": lr})

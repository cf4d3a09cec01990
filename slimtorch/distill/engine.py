"""One distillation hop: teachers → student, trained with :func:`slimtorch.train.fit`.

The student and its feature adapters travel as one module (:class:`DistillWrapper`) so checkpoints
and DDP see both. Teacher outputs and features come from :class:`TeacherPanel`, run live or once
into a :class:`~slimtorch.distill.cache.TeacherCache` looked up by example index; batches carry
``(x, (labels, index))`` for that.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from slimtorch.core import Batch, RunContext, forward
from slimtorch.data.bundle import DataBundle, dataset_len
from slimtorch.distill.cache import TeacherCache, attention_mask_of
from slimtorch.distill.config import DistillConfig, FeatureSpec
from slimtorch.distill.freeze import dropout_off, frozen, frozen_names
from slimtorch.distill.hooks import FeatureTaps, make_adapter
from slimtorch.distill.losses import FEATURE_LOSSES, LOSSES, mix_outputs, teacher_target
from slimtorch.distributed import training_world_size
from slimtorch.errors import ShapeMismatchError
from slimtorch.measure.accuracy import accuracy_of, mean_cosine, predict
from slimtorch.measure.modes import eval_mode
from slimtorch.train import FitResult, fit

log = logging.getLogger(__name__)


class IndexedDataset(Dataset):
    """``dataset[i] -> (x, y, i)``: the index lets cached teacher outputs be looked up."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return dataset_len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[i][:2]
        return x, y, i


class IndexedCollate:
    """Collate ``(x, y, i)`` items into ``(x, (labels, index))`` with the data's own collate for ``(x, y)``."""

    def __init__(self, base: Any = None) -> None:
        self.base = base

    def __call__(self, items: list[tuple[Any, Any, int]]) -> tuple[Batch, tuple[Tensor, Tensor]]:
        x, y = (self.base or default_collate)([(x, torch.as_tensor(y)) for x, y, _ in items])
        return x, (torch.as_tensor(y), torch.tensor([i for _, _, i in items]))


class DistillWrapper(nn.Module):
    """The student plus its feature adapters. ``forward(x) -> (output, {pair: adapted feature})``."""

    def __init__(self, student: nn.Module, pairs: Sequence[FeatureSpec] = (), adapters: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.student = student
        self.pairs = list(pairs)
        self.adapters = nn.ModuleDict(adapters or {})
        self.taps = FeatureTaps(student, list(dict.fromkeys(p.student for p in self.pairs)), "student") if self.pairs else None

    def forward(self, x: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        out = forward(self.student, x)
        if self.taps is None:
            return out, {}
        feats = self.taps.pop()
        return out, {key: self.adapters[key](feats[p.student]) for key, p in zip(self.adapters, self.pairs)}

    def release(self) -> nn.Module:
        """Remove the hooks and hand back the bare student."""
        if self.taps is not None:
            self.taps.remove()
        return self.student


def _pair_key(i: int) -> str:
    return f"pair{i}"


class TeacherPanel:
    """The teachers of one hop: their mixed target for a batch, plus the first teacher's tapped features."""

    def __init__(self, teachers: Sequence[nn.Module], weights: Sequence[float], config: DistillConfig, pairs: Sequence[FeatureSpec] = ()) -> None:
        self.teachers, self.weights, self.config = list(teachers), list(weights), config
        self.pairs = list(pairs)
        self.taps = FeatureTaps(self.teachers[0], list(dict.fromkeys(p.teacher for p in self.pairs)), "teacher") if self.pairs else None

    @torch.no_grad()  # teachers are targets: recording their autograd graph would only cost time and memory
    def compute(self, x: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        outs = []
        for teacher in self.teachers:
            teacher.eval()
            outs.append(forward(teacher, x).float())
        feats = self.taps.pop() if self.taps is not None else {}
        return teacher_target(outs, self.weights, self.config), feats

    def close(self) -> None:
        if self.taps is not None:
            self.taps.remove()


class RandomSubsetSampler(Sampler[int]):
    """``num_samples`` distinct indices of ``range(n)`` drawn afresh each epoch from ``generator`` (reseeded per epoch by fit).

    An "epoch" of a large corpus then is a fixed number of steps: validation, checkpoints and the
    convergence check come that often, and a resumed run draws the same examples.
    """

    def __init__(self, n: int, num_samples: int, generator: torch.Generator) -> None:
        self.n, self.num_samples, self.generator = n, min(num_samples, n), generator

    def __iter__(self) -> Any:
        return iter(torch.randperm(self.n, generator=self.generator)[: self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples


def is_deterministic(dataset: Dataset) -> bool:
    """True when reading an example twice gives the same input (no random augmentation)."""
    if dataset_len(dataset) == 0:
        return True
    return same_input(dataset[0][0], dataset[0][0])


def same_input(a: object, b: object) -> bool:
    """Equality of two inputs: tensors, dicts of tensors (tokenized text, several inputs), tuples/lists of them."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_input(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_input(x, y) for x, y in zip(a, b))
    return bool(a == b)


def check_output_shapes(student: nn.Module, teachers: Sequence[nn.Module], data: DataBundle) -> tuple[int, ...]:
    """Run every model on two examples; their output shapes must match the student's.

    Raises:
        ShapeMismatchError: with both shapes and what to change.
    """
    x = data.example_batch(2, split="val")
    with torch.no_grad():
        with eval_mode(student):
            s_shape = tuple(forward(student, x).shape)
        for i, teacher in enumerate(teachers):
            teacher.eval()
            t_shape = tuple(forward(teacher, x).shape)
            if t_shape != s_shape:
                raise ShapeMismatchError(
                    f"distill: teacher {i} outputs shape {t_shape} but the student outputs {s_shape} (batch of 2). "
                    "Both must produce the same output (same num_classes, or the same embedding width for loss "
                    "'cosine'/'mse'); give the student the teacher's num_classes / hidden size."
                )
    return s_shape


def build_adapters(student: nn.Module, teacher: nn.Module, pairs: Sequence[FeatureSpec], data: DataBundle) -> dict[str, nn.Module]:
    """One adapter per feature pair, sized from a forward pass of both models."""
    if not pairs:
        return {}
    x = data.example_batch(2, split="val")
    s_taps = FeatureTaps(student, list(dict.fromkeys(p.student for p in pairs)), "student")
    t_taps = FeatureTaps(teacher, list(dict.fromkeys(p.teacher for p in pairs)), "teacher")
    try:
        with torch.no_grad():
            with eval_mode(student):
                forward(student, x)
            forward(teacher.eval(), x)
        s_feats, t_feats = s_taps.pop(), t_taps.pop()
    finally:
        s_taps.remove()
        t_taps.remove()
    return {  # relations compare (T, T) maps: they need no adapter whatever the widths
        _pair_key(i): nn.Identity() if p.loss == "relation" else
        make_adapter(s_feats[p.student].shape[1:], t_feats[p.teacher].shape[1:], f"{p.student!r}→{p.teacher!r}")
        for i, p in enumerate(pairs)
    }


@dataclass
class HopResult:
    fit: FitResult
    cached: bool
    world_size: int
    adapter_params: int
    frozen_params: int = 0
    cache: dict[str, Any] | None = None


def indexed_loader(dataset: Dataset, collate_fn: Any, batch_size: int, shuffle: bool, seed: int,
                   num_samples: int | None = None) -> DataLoader:
    """The (index-carrying) loader of one process; under torchrun :func:`~slimtorch.train.fit` shards it.

    With ``num_samples`` an epoch is that many examples drawn at random (:class:`RandomSubsetSampler`).
    """
    indexed, collate = IndexedDataset(dataset), IndexedCollate(collate_fn)
    generator = torch.Generator().manual_seed(seed)
    if num_samples is not None:
        sampler = RandomSubsetSampler(len(indexed), num_samples, generator)
        return DataLoader(indexed, batch_size=batch_size, sampler=sampler, generator=generator, collate_fn=collate)
    return DataLoader(indexed, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)


def _loader(dataset: Dataset, data: DataBundle, batch_size: int, shuffle: bool, seed: int, num_samples: int | None = None) -> DataLoader:
    """:func:`indexed_loader` with the data's own collate."""
    return indexed_loader(dataset, data.collate_fn, batch_size, shuffle, seed, num_samples)


def make_evaluate(data: DataBundle, teachers: Sequence[nn.Module], weights: Sequence[float]) -> Any:
    """Validation metric of the student: accuracy, or mean cosine to the teachers' mean embedding."""
    val = data.loader("val")
    if data.task == "classification":
        return lambda student: accuracy_of(*predict(student, val))
    reference = mix_outputs([predict(t, val)[0] for t in teachers], weights)
    return lambda student: mean_cosine(predict(student, val)[0], reference)


def train_hop(
    student: nn.Module,
    teachers: Sequence[nn.Module],
    weights: Sequence[float],
    data: DataBundle,
    config: DistillConfig,
    ctx: RunContext,
    *,
    epochs: int | None = None,
    pairs: Sequence[FeatureSpec] = (),
    description: str = "distill",
    checkpoint_dir: Path | None = None,
) -> HopResult:
    """Distill ``teachers`` into ``student`` in place (best val weights kept) and say how it went."""
    check_output_shapes(student, teachers, data)
    dataset = data.distill_set() if config.use_transfer else data.train
    batch_size = config.batch_size or data.batch_size
    frozen_list = frozen_names(student, config.freeze)
    wrapper = DistillWrapper(student, pairs, build_adapters(student, teachers[0], pairs, data))
    panel = TeacherPanel(teachers, weights, config, pairs)
    cache: TeacherCache | None = None
    if config.cache_teacher and is_deterministic(dataset):
        cache = TeacherCache.build(panel.compute, _loader(dataset, data, 256, False, ctx.seed), len(dataset),  # type: ignore[arg-type]
                                   checkpoint_dir, config.cache_max_mb * 1e6)
    loss = LOSSES.get(config.loss)
    feature_losses = [FEATURE_LOSSES.get(p.loss) for p in pairs]
    keys = list(wrapper.adapters)

    def loss_fn(model: nn.Module, x: Batch, y: tuple[Tensor, Tensor]) -> Tensor:
        labels, idx = y
        mask = attention_mask_of(x)
        out, adapted = model(x)
        target, t_feats = cache.lookup(idx, mask) if cache is not None else panel.compute(x)
        per_example = loss(out, target, labels, config)  # (B,)
        for key, pair, feature_loss in zip(keys, pairs, feature_losses):
            per_example = per_example + pair.weight * feature_loss(adapted[key], t_feats[pair.teacher], mask, pair)
        return per_example.mean()

    student_eval = make_evaluate(data, teachers, weights)
    model: nn.Module = wrapper
    world = training_world_size()  # fit trains with DDP when this process is one of several (torchrun or ddp.world_size)
    loader = _loader(dataset, data, batch_size, True, ctx.seed, config.examples_per_epoch)
    cache_facts = None if cache is None else cache.describe()
    try:
        with frozen(student, frozen_list), dropout_off(student, not config.use_dropout):
            result = fit(model, loss_fn, loader, config.train_config(epochs), ctx, evaluate=lambda m: student_eval(wrapper.student),
                         checkpoint_dir=checkpoint_dir, description=description)
    finally:
        panel.close()
        wrapper.release()
        if cache is not None:
            cache.close()
    n_adapter = sum(p.numel() for p in wrapper.adapters.parameters())
    params = dict(student.named_parameters())
    return HopResult(fit=result, cached=cache is not None, world_size=world, adapter_params=n_adapter,
                     frozen_params=sum(params[n].numel() for n in frozen_list), cache=cache_facts)

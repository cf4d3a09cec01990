"""Importance criteria: small classes that score every weight of a layer (higher = keep).

Each criterion gives a weight-shaped score for mask pruning (``scores``) and a Torch-Pruning
importance for structural removal (``tp_importance``). Activation and Taylor scores need calibration
batches: call ``prepare(model, modules, batches, loss_fn)`` first.

Example:
    >>> crit = IMPORTANCE.get("magnitude")(p=1)
    >>> crit.scores("fc", nn.Linear(4, 2)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimtorch.core import Batch, RunContext, forward
from slimtorch.data.bundle import UNLABELED
from slimtorch.errors import NotCalibratedError
from slimtorch.measure.modes import eval_mode
from slimtorch.prune.masks import mask_of, raw_weight, weight_2d, weight_of
from slimtorch.registry import Registry
from slimtorch.train.losses import labeled_cross_entropy

LossFn = Callable[[nn.Module, Batch, Tensor], Tensor]


def calibration_loss(task: str, kind: str | None = None) -> LossFn:
    """The loss whose gradient Taylor scores use: CE on labels, next-token CE, or output energy (embeddings)."""

    def loss(model: nn.Module, x: Batch, y: Tensor) -> Tensor:
        out = forward(model, x)
        y = y.to(out.device)  # calibration batches come from CPU loaders; the model may sit on a GPU
        if kind == "causal_lm" and isinstance(x, dict):
            ids = x["input_ids"].to(out.device)
            return F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))
        if task == "classification" and (y != UNLABELED).any():
            return labeled_cross_entropy(out, y)
        return out.pow(2).mean()  # embeddings: no labels; keep what carries the output's energy

    return loss


class Importance:
    """Base criterion: weight-shaped scores for masks, a Torch-Pruning importance for removal."""

    needs_data = False

    def prepare(self, model: nn.Module, modules: dict[str, nn.Module], batches: Iterable[tuple[Batch, Tensor]], loss_fn: LossFn) -> None:
        """Collect calibration statistics (no-op for data-free criteria)."""

    def scores(self, fqn: str, module: nn.Module) -> Tensor:
        raise NotImplementedError

    def masked_scores(self, fqn: str, module: nn.Module) -> Tensor:
        """``scores`` with already-removed weights at ``-inf`` so they stay removed."""
        s = self.scores(fqn, module).float()
        mask = mask_of(module)
        return s if mask is None else s.masked_fill(mask == 0, float("-inf"))

    def tp_importance(self) -> Any:
        raise NotImplementedError


IMPORTANCE: Registry[type[Importance]] = Registry("importance criterion")


@IMPORTANCE.register("magnitude")
class MagnitudeImportance(Importance):
    """``|w|^p`` (p = 1: L1, p = 2: L2); groups sum it. Han et al. 2015, https://arxiv.org/abs/1506.02626."""

    def __init__(self, p: int = 2) -> None:
        self.p = p

    def scores(self, fqn: str, module: nn.Module) -> Tensor:
        return weight_of(module).detach().abs().pow(self.p)

    def tp_importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=self.p)


@IMPORTANCE.register("random")
class RandomImportance(Importance):
    """Uniform random scores: the control every criterion must beat."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def scores(self, fqn: str, module: nn.Module) -> Tensor:
        return torch.rand(weight_of(module).shape, generator=self.generator)

    def tp_importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.RandomImportance()


class _Calibrated(Importance):
    needs_data = True

    def __init__(self) -> None:
        self.stats: dict[str, Tensor] = {}

    def _stat(self, fqn: str) -> Tensor:
        if fqn not in self.stats:
            raise NotCalibratedError(
                f"{type(self).__name__} has no statistics for {fqn!r}; call prepare(model, modules, batches, loss_fn) first."
            )
        return self.stats[fqn]


@IMPORTANCE.register("activation")
class ActivationImportance(_Calibrated):
    """``|w_ij| * ||x_j||_2`` over calibration inputs (Wanda, Sun et al. 2023, https://arxiv.org/abs/2306.11695).

    For channel removal the score of an output channel is the mean ``|y_c|`` of its activation.
    """

    def prepare(self, model: nn.Module, modules: dict[str, nn.Module], batches: Iterable[tuple[Batch, Tensor]], loss_fn: LossFn) -> None:
        in_sq: dict[str, Tensor] = {}
        self.out_abs: dict[nn.Module, Tensor] = {}

        def hook(fqn: str, module: nn.Module) -> Callable[..., None]:
            def run(_: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
                x = args[0].detach()
                ch = 1 if isinstance(module, nn.modules.conv._ConvNd) else -1
                x_c = x.movedim(ch, -1).reshape(-1, x.shape[ch])  # (N, I)
                y = out.detach()
                y_c = y.movedim(1 if ch == 1 else -1, -1).reshape(-1, y.shape[1 if ch == 1 else -1])  # (N, O)
                in_sq[fqn] = in_sq.get(fqn, 0) + x_c.pow(2).sum(0)
                self.out_abs[module] = self.out_abs.get(module, 0) + y_c.abs().mean(0)

            return run

        handles = [m.register_forward_hook(hook(f, m)) for f, m in modules.items()]
        try:
            with torch.no_grad():
                for x, _ in batches:
                    forward(model, x)
        finally:
            for h in handles:
                h.remove()
        self.stats = {f: v.sqrt() for f, v in in_sq.items()}

    def scores(self, fqn: str, module: nn.Module) -> Tensor:
        w = weight_2d(module, weight_of(module).detach()).abs()  # (O, I, *k)
        norm = self._stat(fqn).to(w.dtype)  # (I,) per input channel (conv: groups=1 assumed)
        if w.shape[1] != norm.shape[0]:  # grouped conv: fall back to magnitude
            return weight_of(module).detach().abs()
        s = w * norm.view(1, -1, *([1] * (w.dim() - 2)))
        return s.t() if type(module).__name__ == "Conv1D" else s

    def tp_importance(self) -> Any:
        from slimtorch.prune._tp import OutputActivationImportance

        return OutputActivationImportance(getattr(self, "out_abs", {}))


@IMPORTANCE.register("taylor")
class TaylorImportance(_Calibrated):
    """First-order Taylor ``|w * dL/dw|`` summed over calibration batches (Molchanov et al. 2019,
    https://arxiv.org/abs/1906.10771). The state is the gradient buffer of each layer."""

    def prepare(self, model: nn.Module, modules: dict[str, nn.Module], batches: Iterable[tuple[Batch, Tensor]], loss_fn: LossFn) -> None:
        params = {f: raw_weight(m) for f, m in modules.items()}
        grads = {f: torch.zeros_like(p) for f, p in params.items()}
        with eval_mode(model):
            for x, y in batches:
                model.zero_grad(set_to_none=True)
                loss_fn(model, x, y).backward()
                for f, p in params.items():
                    if p.grad is not None:
                        grads[f] += p.grad.detach()
        for f, p in params.items():  # Torch-Pruning's GroupTaylorImportance reads weight.grad
            p.grad = grads[f].clone()
        self.stats = grads

    def scores(self, fqn: str, module: nn.Module) -> Tensor:
        return (weight_of(module).detach() * self._stat(fqn)).abs()

    def tp_importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.GroupTaylorImportance()


def build_importance(name: str, **settings: Any) -> Importance:
    """The registered criterion ``name`` given the run-wide settings it takes (``p``, ``seed``); the rest
    are not its business. A criterion built directly refuses an argument it does not know."""
    cls = IMPORTANCE.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in settings.items() if k in accepted})


def calibrate(crit: Importance, model: nn.Module, targets: dict[str, nn.Module], ctx: RunContext, n_batches: int) -> None:
    """Feed ``n_batches`` training batches to a data-driven criterion (activation, taylor); others need none."""
    if crit.needs_data:
        batches = list(itertools.islice(ctx.data.loader("train", shuffle=True, seed=ctx.seed), n_batches))
        hf_kind = getattr(model, "kind", None) if hasattr(model, "hf") else None
        crit.prepare(model, targets, batches, calibration_loss(ctx.task, hf_kind))

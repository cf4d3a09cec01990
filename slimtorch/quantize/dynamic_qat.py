"""Quantization-aware training for onnxruntime's dynamic int8: the float weights learn to survive it.

onnxruntime's ``quantize_dynamic`` (see :mod:`slimtorch.quantize._ort`) turns every Linear into
``DynamicQuantizeLinear → MatMulInteger``: the activation is quantized per tensor to uint8 with a range
computed on each batch as it runs (``s = (max(x, 0) − min(x, 0)) / 255``, zero point ``round(−min/s)``),
the weight ahead of time to symmetric int8 per output channel (``s = max|w| / 127``). Training with both
roundings in the forward pass and the straight-through gradient (Jacob et al., https://arxiv.org/abs/1712.05877)
moves the weights to where that arithmetic loses least; the weights stay float, and the quantize stage
then quantizes them as it would any model (so the deployed graph is exactly the post-training one).

Unlike :mod:`slimtorch.quantize.qat` (static int8, traced with ``torch.fx``, BatchNorm folded), this
wraps modules in place, so any model whose work is in ``nn.Linear`` trains this way, Hugging Face
transformers included. Embedding tables stay frozen: they are looked up, not multiplied, and training a
30k-row table with AdamW costs most of a small encoder's step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimtorch.measure.accuracy import task_metric
from slimtorch.quantize.details import DynamicQATFacts
from slimtorch.quantize.int8_arithmetic import int16_pair_excess, u8s8_saturates
from slimtorch.quantize.qat import qat_loss
from slimtorch.quantize.smooth import SmoothedLinear
from slimtorch.train.loop import TrainConfig, fit

if TYPE_CHECKING:
    from slimtorch.core import RunContext
    from slimtorch.quantize.config import QATConfig


def _activation_qparams(x: Tensor) -> tuple[Tensor, Tensor]:
    """uint8 per-tensor ``(scale, zero_point)`` of this batch, as onnxruntime's ``DynamicQuantizeLinear`` picks them."""
    lo = torch.clamp(x.detach().min(), max=0.0).float()
    hi = torch.clamp(x.detach().max(), min=0.0).float()
    scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
    return scale, torch.clamp(torch.round(-lo / scale), 0, 255).to(torch.int32)


def dynamic_activation_fake_quant(x: Tensor) -> Tensor:
    """uint8 per tensor with this batch's range, as onnxruntime's ``DynamicQuantizeLinear`` computes it (straight-through)."""
    scale, zero_point = _activation_qparams(x)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


class DynamicInt8Linear(nn.Module):
    """A Linear (or a :class:`SmoothedLinear`) computed as onnxruntime's dynamic int8 computes it, float weights kept.

    Weights symmetric per output channel on [-127, 127] (``s = max|w| / 127``), or [-64, 64] with ``reduce_range``
    (``s = max|w| / 64``, onnxruntime's 7-bit weights). ``saturate`` (default: whether onnxruntime does on this CPU,
    :func:`u8s8_saturates`) adds what int16 pair saturation takes off the int32 sums; the gradient stays straight-through.
    """

    def __init__(self, module: nn.Linear | SmoothedLinear, saturate: bool | None = None, reduce_range: bool = False) -> None:
        super().__init__()
        self.module = module
        self.saturate = u8s8_saturates() if saturate is None else saturate
        self.qmax = 64 if reduce_range else 127

    def forward(self, x: Tensor) -> Tensor:
        linear = self.module
        if isinstance(linear, SmoothedLinear):
            x, linear = x * linear.inv_scale, linear.linear
        w_scale = torch.clamp(linear.weight.detach().abs().amax(1).float() / self.qmax, min=1e-8)  # (N,)
        weight = torch.fake_quantize_per_channel_affine(linear.weight, w_scale, torch.zeros_like(w_scale, dtype=torch.int32), 0,
                                                        -self.qmax, self.qmax)
        out = F.linear(dynamic_activation_fake_quant(x), weight, linear.bias)
        if self.saturate:
            with torch.no_grad():
                x_scale, x_zero = _activation_qparams(x)
                x2 = x.detach().reshape(-1, x.shape[-1]).float()
                qx = torch.clamp(torch.round(x2 / x_scale) + x_zero, 0, 255)
                qw = torch.clamp(torch.round(linear.weight.detach().float() / w_scale[:, None]), -self.qmax, self.qmax)
                excess = int16_pair_excess(qx, qw) * x_scale * w_scale  # (M, N)
            out = out + excess.reshape(out.shape).to(out.dtype)
        return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def prepare_(model: nn.Module, saturate: bool | None = None, reduce_range: bool = False) -> int:
    """Wrap every Linear of ``model`` (in place) in :class:`DynamicInt8Linear` (``saturate``, ``reduce_range``: see there).

    -> how many.
    """
    targets = [name for name, m in model.named_modules() if isinstance(m, SmoothedLinear)]
    targets += [name for name, m in model.named_modules()
                if isinstance(m, nn.Linear) and not any(name.startswith(t + ".") for t in targets)]
    for name in targets:
        _replace(model, name, DynamicInt8Linear(model.get_submodule(name), saturate, reduce_range))  # type: ignore[arg-type]
    return len(targets)


def strip_(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_`: the wrapped Linears back in place, with their trained weights."""
    for name, m in list(model.named_modules()):
        if isinstance(m, DynamicInt8Linear):
            _replace(model, name, m.module)
    return model


def train_dynamic_qat(model: nn.Module, ctx: RunContext, cfg: QATConfig, reduce_range: bool = False) -> DynamicQATFacts:
    """Train ``model`` (in place; float in, float out) with dynamic-int8 fake quantization and the recipe's loss.

    ``reduce_range``: the weights will be quantized to 7 bits (``quantize.reduce_range``), so they train on that grid.

    The loss is distillation from the run's teacher when it has one (``1 − cos`` for embeddings, KD for logits),
    cross-entropy on the labels otherwise. Returns what the stage records.
    """
    # Pruned (exactly zero) weights stay zero: training would otherwise move them (the masks are baked by now).
    zeros = {m.weight: m.weight == 0 for m in model.modules() if isinstance(m, nn.Linear) and bool((m.weight == 0).any())}

    @torch.no_grad()
    def keep_zeros(_: nn.Module) -> None:
        for weight, is_zero in zeros.items():
            weight.masked_fill_(is_zero, 0.0)

    wrapped = prepare_(model, reduce_range=reduce_range)
    frozen = [p for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        def evaluate(m: nn.Module) -> float:
            return task_metric(m, ctx.data, "val", reference=ctx.teacher)

        before = evaluate(model)
        train = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, patience=None, warmup_epochs=0.1,
                            schedule="cosine", lr_floor=0.0, max_steps=cfg.max_steps)
        loader = ctx.data.loader("train", cfg.batch_size, shuffle=True, seed=ctx.seed)
        result = fit(model, qat_loss(ctx.teacher, ctx.data.task, cfg.temperature, cfg.alpha), loader, train, ctx, evaluate=evaluate,
                     checkpoint_dir=ctx.stage_dir("quantize_qat"), description="quantize qat (dynamic int8)",
                     after_step=keep_zeros if zeros else None)
        after = evaluate(model)
    finally:
        strip_(model)
        for p in frozen:
            p.requires_grad_(True)
    return DynamicQATFacts(wrapped, before, after, "distillation from the teacher" if ctx.teacher is not None else "cross-entropy on labels",
                           result)

"""Quantization-aware training over ONNX QDQ: fake-quantized torch model in, int8 onnxruntime graph out.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference" (https://arxiv.org/abs/1712.05877): train with ``x̂ = s·(clamp(round(x/s) + z, qmin, qmax) − z)``
in the forward pass and the straight-through gradient in the backward pass, so the weights learn to
live on the int8 grid the deployed model uses.

What is simulated is what onnxruntime's QDQ static int8 runs (see :mod:`slimtorch.quantize._ort`):

- weights: symmetric int8 per output channel, ``s = max|w| / 127`` (zero stays exactly zero, so
  pruning masks, which stay in force while training, survive into the int8 graph);
- activations: asymmetric int8 per tensor at the graph input, after every Conv/Linear (after the ReLU
  that follows it, which onnxruntime then drops), after every residual ``add`` and every adaptive
  average pool; ranges calibrated by min/max on calibration batches first and held while training;
- BatchNorm is folded into the convolution before training (its statistics frozen).

Max-pooling, flattening and reshapes pass int8 through unchanged, as in onnxruntime. The model is
traced with ``torch.fx``; one that does not trace is refused with a clear error. Export runs the
fake-quant model through ``torch.onnx.export`` (``fake_quantize_*`` become ``QuantizeLinear`` /
``DequantizeLinear``), then stores weights as int8 and biases as int32 initializers, the layout
onnxruntime fuses into ``QLinearConv``/``QGemm``.
"""

from __future__ import annotations

import copy
import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F

from slimtorch.batch import forward
from slimtorch.distill.losses import distillation_loss
from slimtorch.errors import UnsupportedModuleError
from slimtorch.export.onnx import bake_parametrizations_, export_onnx
from slimtorch.measure.accuracy import task_metric
from slimtorch.models.attrs import set_attrs_
from slimtorch.prune.masks import mask_of, rearm_masks_
from slimtorch.quantize._torch import bias_of
from slimtorch.quantize.int8_arithmetic import int16_pair_excess, u8s8_saturates
from slimtorch.train.loop import TrainConfig, fit
from slimtorch.train.losses import labeled_cross_entropy

if TYPE_CHECKING:
    from slimtorch.core import RunContext
    from slimtorch.quantize.config import QATConfig

log = logging.getLogger(__name__)

QMIN, QMAX = -128, 127
_ADDS = (operator.add, torch.add, operator.iadd)
_RELUS = (F.relu, torch.relu)
# The layers whose weights QAT fake-quantizes.
WeightLayer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
ModuleT = TypeVar("ModuleT", bound=nn.Module)


class ActivationFakeQuant(nn.Module):
    """Per-tensor asymmetric int8 fake quantization with a min/max observer.

    While ``is_observing`` (calibration) it widens its range to every batch it sees; otherwise it
    applies the frozen ``scale``/``zero_point`` buffers. Ranges stay fixed while training: on the
    built-in ResNet a moving average (momentum 0.01) shrank them towards single batches' ranges and
    left the int8 model further from the float one (KL to fp32 about 3.8e-4 against 1.5e-4 held).
    """

    min_val: Tensor
    max_val: Tensor
    scale: Tensor
    zero_point: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.is_observing = False
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        self.min_val.copy_(torch.minimum(self.min_val, x.detach().min().float()))
        self.max_val.copy_(torch.maximum(self.max_val, x.detach().max().float()))
        lo, hi = torch.clamp(self.min_val, max=0.0), torch.clamp(self.max_val, min=0.0)  # the range holds 0 exactly
        scale = torch.clamp((hi - lo) / (QMAX - QMIN), min=1e-8)
        self.scale.copy_(scale)
        self.zero_point.copy_(torch.clamp(torch.round(QMIN - lo / scale), QMIN, QMAX).to(torch.int32))

    def forward(self, x: Tensor) -> Tensor:
        if self.is_observing:
            self._observe(x)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, QMIN, QMAX)


def weight_scale(weight: Tensor) -> Tensor:
    """Symmetric int8 scale per output channel of ``weight`` (O, ...): ``max|w| / 127``. -> (O,)"""
    return torch.clamp(weight.detach().abs().flatten(1).amax(1) / 127.0, min=1e-8)


def weight_fake_quant(weight: Tensor, scale: Tensor | None = None) -> Tensor:
    """Symmetric per-output-channel int8 fake quantization of ``weight`` (O, ...); zeros stay zero."""
    scale = weight_scale(weight) if scale is None else scale
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, QMIN, QMAX)


class QuantWeight(nn.Module):
    """Wraps a Conv/Linear so its (masked) weight is fake-quantized per channel in every forward.

    The scale follows the weight while training; :func:`freeze_` fixes it (a constant for export).
    """

    def __init__(self, module: WeightLayer) -> None:
        super().__init__()
        self.module = module
        self.frozen_scale: Tensor | None
        self.register_buffer("frozen_scale", None, persistent=False)  # a buffer: it follows the module's .to(device)
        # The quantizer of this Linear's input, set by prepare_qat where onnxruntime sums in saturating int16 here
        # (kept out of _modules: it belongs to the graph, not to this layer).
        self.__dict__["saturating_input"] = None

    def forward(self, x: Tensor) -> Tensor:
        # the mask parametrization applies first, so pruned zeros quantize to exactly 0
        scale = weight_scale(self.module.weight) if self.training or self.frozen_scale is None else self.frozen_scale
        weight = weight_fake_quant(self.module.weight, scale)
        if isinstance(self.module, nn.Linear):
            out = F.linear(x, weight, bias_of(self.module))
            quant = self.__dict__["saturating_input"]
            if quant is not None and not torch.onnx.is_in_onnx_export():
                out = out + _saturation_excess(x, quant, self.module.weight, scale).to(out.dtype)
            return out
        return self.module._conv_forward(x, weight, self.module.bias)


@torch.no_grad()
def _saturation_excess(x: Tensor, quant: ActivationFakeQuant, weight: Tensor, w_scale: Tensor) -> Tensor:
    """What onnxruntime's int16 pair saturation changes in ``x @ Ŵ.T`` (x already on ``quant``'s int8 grid).

    Without VNNI onnxruntime turns int8 activations into uint8 (code + 128) for MLAS's u8·s8 kernel, whose pairs
    of products saturate at int16 (see :func:`slimtorch.quantize.int8_arithmetic.int16_pair_excess`).
    """

    x2 = x.detach().reshape(-1, x.shape[-1]).float()
    qx = torch.clamp(torch.round(x2 / quant.scale) + quant.zero_point, QMIN, QMAX) + 128
    qw = torch.clamp(torch.round(weight.detach().float() / w_scale[:, None]), QMIN, QMAX)
    return (int16_pair_excess(qx, qw) * quant.scale * w_scale).reshape(*x.shape[:-1], -1)


def _is(node: fx.Node, modules: dict[str, nn.Module], kinds: tuple[type, ...]) -> bool:
    return node.op == "call_module" and isinstance(modules[str(node.target)], kinds)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return _is(node, modules, (nn.ReLU,)) or (node.op == "call_function" and node.target in _RELUS)


def _fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` and fold every Conv→BatchNorm pair (eval statistics) into the conv; masks are kept."""
    from torch.fx.experimental.optimization import fuse

    masks = {fqn: m.detach().clone() for fqn, m in ((f, mask_of(mod)) for f, mod in model.named_modules()) if m is not None}
    bake_parametrizations_(model)  # BN folding writes new weights, which a mask parametrization refuses; re-armed below
    try:
        traced = fx.symbolic_trace(model.eval())
    except Exception as exc:  # fx raises many types; the message is what the user needs
        raise UnsupportedModuleError(
            f"quantize.qat traces the model with torch.fx and {type(model).__name__} does not trace: "
            f"{str(exc).splitlines()[0]}. Use post-training static_int8 (with max_drop) for this model."
        ) from exc
    fused = cast(fx.GraphModule, fuse(traced, inplace=True))  # fuse returns the GraphModule it was given (typed nn.Module)
    rearm_masks_(fused, {f: m for f, m in masks.items() if _has_weight(fused, f)})
    return fused


def _has_weight(model: nn.Module, fqn: str) -> bool:
    try:
        return isinstance(getattr(model.get_submodule(fqn), "weight", None), Tensor)
    except AttributeError:
        return False


def prepare_qat(model: nn.Module, saturate: bool | None = None) -> fx.GraphModule:
    """A fake-quantized copy of ``model`` (BN folded, weights and activations int8-simulated); ``model`` is untouched.

    ``saturate`` (default: whether onnxruntime does on this CPU) simulates int16 pair saturation in the Linears.

    Raises:
        UnsupportedModuleError: the model does not trace with ``torch.fx`` or has no Conv/Linear.
    """
    gm = _fold_batchnorm(copy.deepcopy(model))
    modules = dict(gm.named_modules())
    graph = gm.graph
    after: list[fx.Node] = []
    n_weights = 0
    for node in list(graph.nodes):
        layer = modules[str(node.target)] if node.op == "call_module" else None
        if isinstance(layer, _WEIGHT_LAYERS):
            gm.add_submodule(str(node.target), QuantWeight(layer))
            n_weights += 1
        if node.op == "placeholder" or _is(node, modules, (*_WEIGHT_LAYERS, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)) \
                or (node.op == "call_function" and node.target in _ADDS):
            users = list(node.users)
            after.append(users[0] if len(users) == 1 and _is_relu(users[0], modules) else node)
    if n_weights == 0:
        raise UnsupportedModuleError(f"quantize.qat found no Conv or Linear layer in {type(model).__name__}; nothing to train.")
    for i, node in enumerate(after):
        name = f"act_fq_{i}"
        gm.add_submodule(name, ActivationFakeQuant())
        with graph.inserting_after(node):
            fq = graph.call_module(name, (node,))

        def is_not_fq(user: fx.Node, fq: fx.Node = fq) -> bool:  # fq itself keeps reading `node`
            return user is not fq

        node.replace_all_uses_with(fq, delete_user_cb=is_not_fq)
    if saturate is None:
        saturate = u8s8_saturates()
    if saturate:
        _link_saturating_inputs(gm)
    graph.lint()
    gm.recompile()
    return set_attrs_(gm, slimtorch_spec=getattr(model, "slimtorch_spec", None))


def _link_saturating_inputs(gm: fx.GraphModule) -> None:
    """Give each Linear the activation quantizer its input comes from (through flatten/reshape), for int16 saturation."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if not _is(node, modules, (QuantWeight,)) or not isinstance(modules[str(node.target)].module, nn.Linear):
            continue
        source = node.args[0]
        while isinstance(source, fx.Node) and source.args and (_is(source, modules, (nn.Flatten, nn.Identity, nn.Dropout)) or (
                source.op in ("call_method", "call_function")
                and str(getattr(source.target, "__name__", source.target)) in ("flatten", "reshape", "view"))):
            source = source.args[0]
        if isinstance(source, fx.Node) and _is(source, modules, (ActivationFakeQuant,)):
            modules[str(node.target)].__dict__["saturating_input"] = modules[str(source.target)]


def freeze_(model: nn.Module) -> nn.Module:
    """Fix every weight scale at the current weights (eval then runs exactly what is exported), in place."""
    for m in model.modules():
        if isinstance(m, QuantWeight):
            m.frozen_scale = weight_scale(m.module.weight)
    return model.eval()


def activation_quantizers(model: nn.Module) -> list[ActivationFakeQuant]:
    return [m for m in model.modules() if isinstance(m, ActivationFakeQuant)]


@torch.no_grad()
def calibrate_(model: ModuleT, batches: list[Any]) -> ModuleT:
    """Set every activation range by min/max over ``batches`` (inputs only), in place."""
    quantizers = activation_quantizers(model)
    model.eval()
    for q in quantizers:
        q.is_observing = True
    try:
        for x in batches:
            forward(model, x)  # moves the CPU batch to wherever the model is
    finally:
        for q in quantizers:
            q.is_observing = False
    return model


def masks_kept(model: nn.Module) -> bool:
    """Whether every masked (pruned) weight of ``model`` is still exactly zero after fake quantization."""
    for m in model.modules():
        if not isinstance(m, QuantWeight):
            continue
        mask = mask_of(m.module)
        if mask is not None and bool((weight_fake_quant(m.module.weight)[mask == 0] != 0).any()):
            return False
    return True


def qat_loss(teacher: nn.Module | None, task: str, temperature: float, alpha: float) -> Callable[[nn.Module, Any, Tensor], Tensor]:
    """The recipe's loss: distillation from ``teacher`` when there is one, else cross-entropy on the labels."""
    if teacher is not None:
        teacher.eval()

    def loss(model: nn.Module, x: Any, y: Tensor) -> Tensor:
        out = forward(model, x)
        if teacher is None:
            return labeled_cross_entropy(out, y)
        with torch.no_grad():
            target = forward(teacher, x)
        return distillation_loss(out, target, y, task, temperature, alpha)

    return loss


@dataclass
class QATResult:
    """A QAT run: the exported int8 graph, the fake-quant torch model it came from, and how training went."""

    onnx_bytes: bytes
    model: fx.GraphModule
    val_calibrated: float  # fake-quant model right after calibration (≈ post-training int8)
    val_trained: float
    fit: dict[str, Any]
    export: dict[str, int]
    is_masks_kept: bool


def train_qat(model: nn.Module, ctx: RunContext, cfg: QATConfig, calibration: list[Any], example: Any, opset: int = 17) -> QATResult:
    """Fake-quantize ``model`` (a copy), calibrate, train with the recipe's loss through ``fit``, export int8 QDQ ONNX."""

    gm = calibrate_(prepare_qat(model), calibration)

    def evaluate(m: nn.Module) -> float:
        return task_metric(m, ctx.data, "val", reference=ctx.teacher)

    before = evaluate(gm)
    train = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, patience=None, warmup_epochs=0.1)
    result = None
    if cfg.epochs > 0:
        loader = ctx.data.loader("train", cfg.batch_size, shuffle=True, seed=ctx.seed)
        result = fit(gm, qat_loss(ctx.teacher, ctx.data.task, cfg.temperature, cfg.alpha), loader, train, ctx, evaluate=evaluate,
                     checkpoint_dir=ctx.stage_dir("quantize_qat"), description="quantize qat")
    freeze_(gm)
    onnx_bytes, stats = int8_initializers_(export_onnx(gm, example, opset))
    summary = {"best_val": result.best_metric, **result.summary()} if result is not None else {}
    return QATResult(onnx_bytes, gm, before, evaluate(gm), summary, stats, masks_kept(gm))


def int8_initializers_(onnx_bytes: bytes) -> tuple[bytes, dict[str, int]]:
    """Store fake-quantized weights as int8 and Conv/Gemm biases as int32 (scale s_x·s_w), onnxruntime's QDQ layout.

    ``QuantizeLinear`` nodes whose input is a float initializer are computed here (round half to even,
    as onnxruntime does) and removed; their ``DequantizeLinear`` reads the int8 tensor instead.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(onnx_bytes)
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    const = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def array(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in const:
            return numpy_helper.to_array(const[name].attribute[0].t)
        return None

    stats = {"int8_weights": 0, "int32_biases": 0}
    producers = {o: n for n in graph.node for o in n.output}
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        w, scale, zp = array(node.input[0]), array(node.input[1]), array(node.input[2])
        if w is None or scale is None or zp is None:  # a scale or zero point computed at run time: leave the node
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(shape)) + zp.reshape(shape).astype(np.int32), QMIN, QMAX).astype(zp.dtype)
        int8 = numpy_helper.from_array(q, node.output[0] + "_int8")
        graph.initializer.append(int8)
        for user in graph.node:
            user.input[:] = [int8.name if i == node.output[0] else i for i in user.input]
        graph.node.remove(node)
        stats["int8_weights"] += 1
    _requantize_after_reshapes_(graph, array)
    producers = {o: n for n in graph.node for o in n.output}
    _int32_biases_(graph, array, producers, stats)
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used and init.name not in {o.name for o in graph.output}:
            graph.initializer.remove(init)
    onnx.checker.check_model(proto)
    return proto.SerializeToString(), stats


_RESHAPES = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


def _requantize_after_reshapes_(graph: Any, array: Any) -> None:
    """``DQ → Flatten → X`` gets ``Q → DQ`` (same scale) after the Flatten, as onnxruntime's quantizer writes it.

    Lossless (a reshape of on-grid values stays on the grid); it lets the pool before and the Gemm
    after fuse into int8 kernels.
    """
    from onnx import helper

    for node in list(graph.node):
        if node.op_type not in _RESHAPES:
            continue
        dq = next((n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] == node.input[0]), None)
        scale = array(dq.input[1]) if dq is not None else None
        if dq is None or scale is None or scale.size != 1:
            continue
        out = node.output[0]
        node.output[0] = out + "_float"
        q = helper.make_node("QuantizeLinear", [out + "_float", dq.input[1], dq.input[2]], [out + "_int8"], name=node.name + "_q")
        dq2 = helper.make_node("DequantizeLinear", [out + "_int8", dq.input[1], dq.input[2]], [out], name=node.name + "_dq")
        at = list(graph.node).index(node) + 1
        graph.node.insert(at, dq2)
        graph.node.insert(at, q)


def _int32_biases_(graph: Any, array: Any, producers: dict[str, Any], stats: dict[str, int]) -> None:
    """Conv/Gemm with DQ activation and DQ weight: bias → DQ(int32, s_x·s_w, axis 0)."""
    from onnx import helper, numpy_helper

    for node in list(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
            continue
        bias = array(node.input[2])
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if bias is None or x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
            continue
        s_x, s_w = array(x_dq.input[1]), array(w_dq.input[1])
        if s_x is None or s_w is None or s_x.size != 1:
            continue
        scale = (s_x.reshape(()) * s_w.reshape(-1) * np.ones_like(bias)).astype(np.float32)
        q = np.rint(bias / scale).astype(np.int32)
        name = node.input[2] + "_int32"
        graph.initializer.extend([numpy_helper.from_array(q, name), numpy_helper.from_array(scale, name + "_scale"),
                                  numpy_helper.from_array(np.zeros_like(q), name + "_zero_point")])
        dq = helper.make_node("DequantizeLinear", [name, name + "_scale", name + "_zero_point"], [name + "_dq"],
                              name=node.name + "_bias_dq", axis=0)
        graph.node.insert(list(graph.node).index(node), dq)
        node.input[2] = name + "_dq"
        stats["int32_biases"] += 1

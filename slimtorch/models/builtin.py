"""Small built-in models for demos and tests (CPU, under a second per forward on a batch).

Every constructor takes explicit per-layer widths so that a structurally pruned model can be
rebuilt from its own shapes (see ``slimtorch.artifact``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from torch import Tensor, nn

from slimtorch.registry import Registry

MODELS: Registry = Registry("model")


@MODELS.register("mlp")
class MLP(nn.Module):
    """Flatten → (Linear → ReLU [→ Dropout])* → Linear. Hinton's digits teacher is ``hidden=[1200, 1200]``."""

    def __init__(
        self,
        input_shape: Sequence[int] = (64,),
        num_classes: int = 10,
        hidden: Sequence[int] = (32,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, num_classes)


def _conv_block(conv: type[nn.Module], norm: type[nn.Module], c_in: int, c_out: int) -> list[nn.Module]:
    return [conv(c_in, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU()]


@MODELS.register("cnn")
class ConvNet(nn.Module):
    """A plain CNN for 1-D signals (mnist1d, input ``(C, L)``) or 2-D images (digits, ``(C, H, W)``).

    Each entry of ``channels`` is a conv-BN-ReLU block; a max-pool follows every second block.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
    ) -> None:
        super().__init__()
        is_2d = len(input_shape) == 3
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if is_2d else (nn.Conv1d, nn.BatchNorm1d)
        pool = nn.MaxPool2d(2) if is_2d else nn.MaxPool1d(2)
        pool_out = nn.AdaptiveAvgPool2d(1) if is_2d else nn.AdaptiveAvgPool1d(1)
        layers: list[nn.Module] = []
        c_in = input_shape[0]
        for i, c_out in enumerate(channels):
            layers += _conv_block(conv, norm, c_in, c_out)
            if i % 2 == 1:
                layers.append(pool)
            c_in = c_out
        self.features = nn.Sequential(*layers, pool_out, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)  # (B, C_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convs with a residual; a 1×1 projection when shape changes."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_mid)
        self.conv2 = nn.Conv2d(c_mid, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@MODELS.register("resnet")
class ResNet(nn.Module):
    """A ResNet-18-shaped CNN (``blocks=[2,2,2,2]``, ``widths=[64,128,256,512]``) of any size.

    No torchvision needed; used by the structured-pruning benchmark.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (2, 2, 2, 2),
        stem: int | None = None,
    ) -> None:
        super().__init__()
        stem = stem or widths[0]
        self.stem = nn.Sequential(*_conv_block(nn.Conv2d, nn.BatchNorm2d, input_shape[0], stem))
        layers: list[nn.Module] = []
        c_in = stem
        for stage, (width, n_blocks) in enumerate(zip(widths, blocks)):
            for b in range(n_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(c_in, width, width, stride))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))))  # (B, num_classes)

"""Small random-init models written the way people write them, and matching synthetic data sources.

Each factory is a ``module:function`` reference (``tests.architectures.zoo:build``) so a saved artifact
rebuilds it in a fresh process; every model has under ~50k parameters and runs in milliseconds on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

CLASSES = 4
IMAGE = (3, 16, 16)
SEQUENCE = (12, 16)  # (T, F): float feature sequences for the RNN / attention models
TOKENS, VOCAB = 12, 96
EOS = VOCAB - 1


class ConvNet(nn.Module):
    """Conv-BN-ReLU stem, a residual block and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x.mean((2, 3)))  # (B, C)


class Depthwise(nn.Module):
    """MobileNetV2-style inverted residual: pointwise expand, depthwise 3x3, pointwise project."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.head(x.mean((2, 3)))


class ConvClassifier(nn.Module):
    """SqueezeNet-style: the last layer is a 1x1 conv with one channel per class, then global pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(32, CLASSES, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)  # (B, C)


class MHAClassifier(nn.Module):
    """A Linear embedding, one ``nn.MultiheadAttention`` with a residual, mean pooling, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(SEQUENCE[1], 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)  # (B, T, D)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.norm(h + a).mean(1))


class EncoderClassifier(nn.Module):
    """``nn.TransformerEncoder`` (2 layers, batch_first) over a Linear embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(SEQUENCE[1], 32)
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


class RNNClassifier(nn.Module):
    """``nn.LSTM`` or ``nn.GRU`` (2 layers, batch_first); the last step's hidden state feeds a Linear head."""

    def __init__(self, cell: str = "lstm") -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(SEQUENCE[1], 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)  # (B, T, H)
        return self.head(out[:, -1])


class ViTClassifier(nn.Module):
    """A user's wrapper around a transformers ViT (tensor in, logits out), as people write them."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(image_size=IMAGE[1], patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, num_labels=CLASSES)
        self.hf = ViTForImageClassification(config)

    def forward(self, x: Tensor) -> Tensor:
        return self.hf(pixel_values=x).logits


class TwoInputs(nn.Module):
    """Two keyword inputs (an image and a feature vector), each through its own branch, then concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.features = nn.Sequential(nn.Linear(SEQUENCE[1], 16), nn.ReLU())
        self.head = nn.Linear(32, CLASSES)

    def forward(self, image: Tensor, features: Tensor) -> Tensor:
        return self.head(torch.cat([self.image(image), self.features(features)], dim=1))


MODELS = {"convnet": ConvNet, "depthwise": Depthwise, "conv_classifier": ConvClassifier, "mha": MHAClassifier,
          "transformer_encoder": EncoderClassifier, "lstm": lambda: RNNClassifier("lstm"), "gru": lambda: RNNClassifier("gru"),
          "vit": ViTClassifier, "two_inputs": TwoInputs}


def build(name: str) -> nn.Module:
    """``tests.architectures.zoo:build`` with ``{"name": ...}``: one of :data:`MODELS`, seeded."""
    torch.manual_seed(0)
    return MODELS[name]()


class _Tokens(Dataset):
    """``({"input_ids", "attention_mask"}, label)`` pairs: the label is whether token 1 appears."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, VOCAB - 1, (n, TOKENS), generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.ids[self.y == 1, 3] = 1
        self.ids[:, -1] = EOS  # every sequence ends with one end token (T5's classifier pools there)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(TOKENS, dtype=torch.long)}, self.y[i]


class _TwoInputs(Dataset):
    """``({"image", "features"}, label)`` pairs."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.image, self.features = torch.randn(n, *IMAGE, generator=g), torch.randn(n, SEQUENCE[1], generator=g)
        self.y = (self.features[:, :CLASSES] + self.image[:, 0, 0, :CLASSES]).argmax(1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return {"image": self.image[i], "features": self.features[i]}, self.y[i]


def data(kind: str = "image", n: int = 48) -> dict[str, Any]:
    """``tests.architectures.zoo:data``: train/val/test splits of ``kind`` image, sequence, tokens or two_inputs."""
    if kind == "tokens":
        return {"train": _Tokens(n, 0), "val": _Tokens(n // 2, 1), "test": _Tokens(n // 2, 2), "num_classes": 2}
    if kind == "two_inputs":
        return {"train": _TwoInputs(n, 0), "val": _TwoInputs(n // 2, 1), "test": _TwoInputs(n // 2, 2), "num_classes": CLASSES}
    shape = IMAGE if kind == "image" else SEQUENCE

    def split(size: int, seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(size, *shape, generator=g)
        return TensorDataset(x, (x.flatten(1)[:, :CLASSES].argmax(1)))

    return {"train": split(n, 0), "val": split(n // 2, 1), "test": split(n // 2, 2), "num_classes": CLASSES}

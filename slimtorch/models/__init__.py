"""Built-in models and model references."""

from slimtorch.models.builtin import MODELS, ConvNet, MLP, ResNet
from slimtorch.models.refs import build_model, import_object

__all__ = ["MODELS", "MLP", "ConvNet", "ResNet", "build_model", "import_object"]

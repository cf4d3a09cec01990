"""Built-in models and model references."""

from slimtorch.models.builtin import MLP, MODELS, ConvNet, ResNet
from slimtorch.models.refs import build_model, import_object

__all__ = ["MLP", "MODELS", "ConvNet", "ResNet", "build_model", "import_object"]

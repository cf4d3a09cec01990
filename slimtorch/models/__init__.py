"""Built-in models and model references."""

from typing import TYPE_CHECKING

from slimtorch.registry import lazy_exports

if TYPE_CHECKING:
    from slimtorch.models.builtin import MLP, MODELS, ConvNet, ResNet
    from slimtorch.models.refs import build_model, import_object

# imported on first use: artifact.py reads models.* leaves, and models.refs reads artifact (a saved directory is a model)
_EXPORTS = {**{name: "slimtorch.models.builtin" for name in ("MLP", "MODELS", "ConvNet", "ResNet")},
            "build_model": "slimtorch.models.refs", "import_object": "slimtorch.models.refs"}
__all__ = ["MLP", "MODELS", "ConvNet", "ResNet", "build_model", "import_object"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
